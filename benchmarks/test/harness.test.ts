import { describe, expect, it } from "vitest"
import { CliError, parseArgs, scenarioIds } from "../src/cli.js"
import { describeMetrics, roundOrder, summarize } from "../src/harness/blocks.js"
import { LatencyHistogram } from "../src/harness/histogram.js"
import { firstMeasuredIndex, runClosedLoop, runOpenLoop, scheduleOffsets } from "../src/harness/schedule.js"
import { median, quantile, ratio, spread } from "../src/harness/stats.js"
import type { MachineFacts, RunResult } from "../src/harness/types.js"
import { barChart, linearTicks, lineChart, logTicks } from "../src/report/svg.js"
import { backlogGrowth } from "../src/scenarios/delivery.js"
import { analyseKnee, kneeOf } from "../src/scenarios/knee/measure.js"
import { analyseRelay } from "../src/scenarios/relay/measure.js"
import { renderReport } from "../src/suite/markdown.js"

describe("LatencyHistogram", () => {
  it("gives the percentiles of known data within HdrHistogram's precision", () => {
    const h = new LatencyHistogram()
    for (let ms = 1; ms <= 1000; ms++) h.recordMs(ms)
    const s = h.summary()
    expect(s.count).toBe(1000)
    const close = (actual: number, expected: number) =>
      expect(Math.abs(actual - expected) / expected).toBeLessThan(0.002)
    close(s.p50, 500)
    close(s.p90, 900)
    close(s.p99, 990)
    close(s.p999, 999)
    close(s.max, 1000)
    close(s.mean, 500.5)
  })

  it("keeps sub-millisecond resolution and clamps negative values to 1 µs", () => {
    const h = new LatencyHistogram()
    h.recordMs(0.25)
    h.recordMs(-3)
    expect(h.percentileMs(100)).toBeCloseTo(0.25, 3)
    expect(h.percentileMs(0)).toBeCloseTo(0.001, 4)
  })

  it("weights repeated values and merges histograms", () => {
    const a = new LatencyHistogram()
    a.recordMsTimes(10, 99)
    const b = new LatencyHistogram()
    b.recordMs(1000)
    a.add(b)
    expect(a.count).toBe(100)
    expect(a.percentileMs(50)).toBeCloseTo(10, 1)
    expect(a.summary().max).toBeCloseTo(1000, 0)
  })

  it("reports NaN for an empty histogram rather than zeros", () => {
    expect(Number.isNaN(new LatencyHistogram().summary().p99)).toBe(true)
  })
})

describe("open-loop schedule", () => {
  it("spaces sends evenly at the rate and counts floor(duration × rate)", () => {
    const o = scheduleOffsets(1000, 2000)
    expect(o.length).toBe(2000)
    expect(o[0]).toBe(0)
    expect(o[1]).toBeCloseTo(1, 9)
    expect(o[1999]).toBeCloseTo(1999, 9)
    expect(scheduleOffsets(3, 1000).length).toBe(3)
    expect(scheduleOffsets(0, 1000).length).toBe(0)
  })

  it("finds the first send after the warm-up", () => {
    const o = scheduleOffsets(100, 1000) // every 10 ms
    expect(firstMeasuredIndex(o, 0)).toBe(0)
    expect(firstMeasuredIndex(o, 250)).toBe(25)
    expect(firstMeasuredIndex(o, 255)).toBe(26)
    expect(firstMeasuredIndex(o, 5000)).toBe(o.length)
  })

  it("issues every planned send without waiting for earlier ones (open loop)", async () => {
    let inFlightMax = 0
    let inFlight = 0
    const result = await runOpenLoop({
      ratePerSec: 500,
      durationMs: 100,
      warmupMs: 20,
      maxInFlight: 1000,
      send: async () => {
        inFlight++
        inFlightMax = Math.max(inFlightMax, inFlight)
        await new Promise((resolve) => setTimeout(resolve, 30)) // slower than the interval
        inFlight--
      },
    })
    expect(result.planned).toBe(50)
    expect(result.issued).toBe(50)
    expect(result.committed).toBe(50)
    expect(result.firstMeasured).toBe(10)
    // A closed loop would never have more than one send in flight.
    expect(inFlightMax).toBeGreaterThan(1)
    // Latency counts from the intended time, so it is at least the send's own 30 ms.
    expect(result.commitLatency.percentileMs(0)).toBeGreaterThanOrEqual(29)
    expect(result.lag.count).toBe(40)
  })

  it("skips and counts sends beyond the in-flight cap instead of queueing without bound", async () => {
    const result = await runOpenLoop({
      ratePerSec: 1000,
      durationMs: 50,
      warmupMs: 0,
      maxInFlight: 5,
      send: () => new Promise((resolve) => setTimeout(resolve, 200)),
      settleMs: 1000,
    })
    expect(result.issued).toBe(5)
    expect(result.skipped).toBe(result.planned - 5)
  })

  it("records failed sends as errors with the first message", async () => {
    const result = await runOpenLoop({
      ratePerSec: 200,
      durationMs: 50,
      warmupMs: 0,
      maxInFlight: 100,
      send: () => Promise.reject(new Error("boom")),
    })
    expect(result.errors).toBe(result.planned)
    expect(result.firstError).toBe("boom")
  })

  it("closed loop keeps exactly `concurrency` operations in flight", async () => {
    let inFlight = 0
    let max = 0
    const r = await runClosedLoop({
      concurrency: 3,
      durationMs: 60,
      warmupMs: 10,
      op: async () => {
        inFlight++
        max = Math.max(max, inFlight)
        await new Promise((resolve) => setTimeout(resolve, 5))
        inFlight--
      },
    })
    expect(max).toBe(3)
    expect(r.total).toBeGreaterThan(3)
    expect(r.windowMs).toBe(50)
  })
})

describe("stats", () => {
  it("computes median, quartiles and spread", () => {
    expect(median([3, 1, 2])).toBe(2)
    expect(median([1, 2, 3, 4])).toBe(2.5)
    expect(quantile([1, 2, 3, 4, 5], 0.25)).toBe(2)
    const s = spread([5, 1, Number.NaN, 3])
    expect(s).toMatchObject({ n: 3, median: 3, min: 1, max: 5, q1: 2, q3: 4 })
    expect(Number.isNaN(spread([]).median)).toBe(true)
    expect(ratio(6, 3)).toBe(2)
    expect(Number.isNaN(ratio(1, 0))).toBe(true)
  })

  it("rotates the arm order every round so arms are interleaved", () => {
    expect(roundOrder(["a", "b", "c"], 0)).toEqual(["a", "b", "c"])
    expect(roundOrder(["a", "b", "c"], 1)).toEqual(["b", "c", "a"])
    expect(roundOrder(["a", "b", "c"], 3)).toEqual(["a", "b", "c"])
  })

  it("summarizes measured blocks only, and counts saturated ones", () => {
    const arm = {
      id: "x",
      label: "x",
      transport: "memory" as const,
      variant: "sdk",
      params: {},
      run: async () => ({ metrics: {}, flags: [] }),
    }
    const r = summarize(
      [arm],
      [
        { arm: "x", block: 0, warmup: true, metrics: { p99: 100 }, flags: [] },
        { arm: "x", block: 1, warmup: false, metrics: { p99: 2 }, flags: [] },
        { arm: "x", block: 2, warmup: false, metrics: { p99: 4 }, flags: ["generator-lag"] },
      ],
    )
    expect(r.arms[0]?.metrics.p99?.median).toBe(3)
    expect(r.arms[0]?.blocks).toBe(2)
    expect(r.arms[0]?.saturatedBlocks).toBe(1)
    expect(r.arms[0]?.flags).toEqual(["generator-lag"])
  })

  it("measures backlog growth from the first to the last fifth", () => {
    expect(backlogGrowth([0, 0, 0, 0, 0, 10, 10, 10, 10, 10])).toBe(10)
    expect(backlogGrowth([5, 5, 5, 5, 5])).toBe(0)
    expect(backlogGrowth([1, 2])).toBe(0)
  })

  it("formats a block's metrics for the progress line", () => {
    expect(describeMetrics({ p50: 1.5, p99: 12, deliveredPerSec: 1000 })).toBe(
      "p50 1.50 ms  p99 12.0 ms  1000 ev/s delivered",
    )
  })
})

describe("the knee", () => {
  it("is the last concurrency before adding writers stops adding 15 %", () => {
    expect(
      kneeOf([
        { c: 1, commits: 100 },
        { c: 2, commits: 190 },
        { c: 4, commits: 200 },
      ]),
    ).toBe(2)
    expect(
      kneeOf([
        { c: 1, commits: 100 },
        { c: 2, commits: 200 },
        { c: 4, commits: 400 },
      ]),
    ).toBeUndefined()
  })

  it("finds where the broker path commits 20 % more than coalesced NOTIFY", () => {
    const arm = (variant: string, c: number, commits: number) => ({
      arm: `${variant}|${c}`,
      label: variant,
      transport: "postgres" as const,
      variant,
      params: { concurrency: c },
      status: "ok" as const,
      blocks: 1,
      saturatedBlocks: 0,
      flags: [],
      metrics: {
        commitsPerSec: { n: 1, median: commits, min: commits, max: commits, q1: commits, q3: commits },
        p99: { n: 1, median: 1, min: 1, max: 1, q1: 1, q3: 1 },
      },
    })
    const d = analyseKnee(
      [
        arm("coalesced", 1, 100),
        arm("coalesced", 4, 300),
        arm("coalesced", 16, 320),
        arm("broker-relay", 1, 100),
        arm("broker-relay", 4, 330),
        arm("broker-relay", 16, 900),
      ],
      ["coalesced", "broker-relay"],
      [1, 4, 16],
    )
    expect(d.knees.coalesced).toBe(4)
    expect(d.flip).toMatchObject({ concurrency: 16, notifyingCommitsPerSec: 320, against: "broker-relay" })
  })
})

describe("command line", () => {
  it("parses --quick, --scenario and --transports, ignoring pnpm's --", () => {
    const o = parseArgs(["--", "--quick", "--scenario", "knee,latency", "--transports=memory"])
    expect(o.quick).toBe(true)
    expect(o.scenarios).toEqual(["latency", "knee"])
    expect(o.transports).toEqual(["memory"])
    expect(parseArgs([]).scenarios).toEqual([...scenarioIds])
  })

  it("rejects unknown scenarios and options", () => {
    expect(() => parseArgs(["--scenario", "nope"])).toThrow(CliError)
    expect(() => parseArgs(["--fast"])).toThrow(CliError)
    expect(() => parseArgs(["--scenario"])).toThrow(CliError)
  })
})

describe("report", () => {
  const machine: MachineFacts = {
    cpuModel: "Test CPU",
    cores: 2,
    memoryGiB: 24,
    os: "Debian",
    kernel: "6",
    node: "v24",
    loadAverageStart: [0.1, 0.1, 0.1],
    loadAverageEnd: [0.2, 0.2, 0.2],
    gitCommit: "abc",
    gitDirty: false,
    servers: { postgres: "18.4", redis: "7.0.15", nats: "2.9.10" },
    postgresSettings: { fsync: "on" },
    packages: {},
  }
  const s = (v: number) => ({ n: 2, median: v, min: v * 0.9, max: v * 1.1, q1: v, q3: v })
  const run = (quick: boolean): RunResult => ({
    schema: "bus-benchmarks/1",
    quick,
    startedAt: "2025-01-01T00:00:00.000Z",
    finishedAt: "2025-01-01T00:02:00.000Z",
    durationMs: 120_000,
    profile: { latencyRates: [100, 1000, 5000] },
    machine,
    transports: { "postgres-notify": { available: true }, nats: { available: false, reason: "not built" } },
    queryCountMethod: "pg_stat_statements",
    warnings: [],
    scenarios: [
      {
        id: "throughput",
        title: "t",
        method: ["closed loop"],
        durationMs: 1000,
        notes: [],
        blocks: [],
        derived: {
          ratios: {
            "postgres-notify": { sdkPerSec: 500, rawPerSec: 1000, throughputRatio: 0.5, cpuPerEventRatio: 3 },
          },
        },
        arms: [
          {
            arm: "postgres-notify",
            label: "postgres-notify (SDK)",
            transport: "postgres-notify",
            variant: "sdk",
            params: { pipe: "postgres-notify" },
            status: "ok",
            blocks: 2,
            saturatedBlocks: 0,
            flags: [],
            metrics: { deliveredPerSec: s(500), p99: s(12) },
          },
          {
            arm: "raw-pg",
            label: "raw pg",
            transport: "postgres-notify",
            variant: "raw",
            params: { pipe: "raw-pg" },
            status: "ok",
            blocks: 2,
            saturatedBlocks: 1,
            flags: ["generator-lag"],
            metrics: { deliveredPerSec: s(1000), p99: s(3) },
          },
          {
            arm: "nats",
            label: "nats (SDK)",
            transport: "nats",
            variant: "sdk",
            params: { pipe: "nats" },
            status: "not-available",
            reason: "not built",
            blocks: 0,
            saturatedBlocks: 0,
            flags: [],
            metrics: {},
          },
        ],
      },
    ],
  })

  it("renders machine facts, the method, tables, ratios and charts", () => {
    const r = renderReport(run(false), {
      chartsPath: "benchmarks",
      jsonPath: "benchmarks/latest.json",
      command: "pnpm bench",
    })
    expect(r.markdown).toContain("| CPU | Test CPU × 2 cores |")
    expect(r.markdown).toContain("2.9.10")
    expect(r.markdown).toContain("## Method")
    expect(r.markdown).toContain("0.50×")
    expect(r.markdown).toContain("500 (450–550)")
    expect(r.markdown).toContain("⚠ 1 saturated (generator-lag)")
    expect(r.markdown).toContain("nats (SDK): not available: not built")
    expect(r.markdown).toContain("](benchmarks/throughput-ratio.svg)")
    expect(r.markdown).not.toContain("QUICK RUN")
    expect(Object.keys(r.svgs).sort()).toEqual(["throughput-ratio.svg", "throughput.svg"])
    for (const svg of Object.values(r.svgs)) {
      expect(svg.startsWith("<svg")).toBe(true)
      expect(svg.trim().endsWith("</svg>")).toBe(true)
    }
  })

  it("lists every issue-12 target beside its figure, met or not, and says what was not measured", () => {
    const arm = (
      variant: string,
      params: Record<string, number | string>,
      metrics: Record<string, number>,
      flags: string[] = [],
    ) => ({
      arm: `${variant}|${JSON.stringify(params)}`,
      label: variant,
      transport: "nats" as const,
      variant,
      params,
      status: "ok" as const,
      blocks: 1,
      saturatedBlocks: flags.length > 0 ? 1 : 0,
      flags,
      metrics: Object.fromEntries(Object.entries(metrics).map(([k, v]) => [k, s(v)])),
    })
    const relayArms = [
      arm("insert-alone", { pipe: "insert-alone", rate: 500 }, { pgUsPerEventNet: 100 }),
      arm("broker-path", { pipe: "nats", rate: 500 }, { pgUsPerEventNet: 110 }),
      arm("broker-path", { pipe: "redis-streams", rate: 500 }, { pgUsPerEventNet: 150 }),
      ...[25_000, 50_000, 100_000].map((n) =>
        arm(
          "drain",
          { pipe: "nats", backlog: n },
          { forwardedPerSec: n === 100_000 ? 12_000 : 11_000, quietDuringDrainMs: 40, quietPreloadedMs: 300 },
        ),
      ),
      ...[25_000, 100_000].map((n) =>
        arm(
          "drain",
          { pipe: "redis-streams", backlog: n },
          { forwardedPerSec: n === 100_000 ? 3_000 : 9_000, quietDuringDrainMs: 2_500 },
        ),
      ),
    ]
    const derived = analyseRelay(relayArms)
    const nats = derived.brokers.nats as { flatness: number; cpuRatio: number; rateAtLargest: number }
    expect(nats.rateAtLargest).toBe(12_000)
    expect(nats.flatness).toBeCloseTo(12_000 / 11_000 - 1, 6)
    expect(nats.cpuRatio).toBeCloseTo(1.1, 6)
    const base = run(false)
    const r = renderReport(
      {
        ...base,
        scenarios: [
          ...base.scenarios,
          {
            id: "knee",
            title: "k",
            method: [],
            durationMs: 1,
            notes: [],
            blocks: [],
            arms: [
              arm("no-notify", { concurrency: 8 }, { eventsPerSec: 1_000 }),
              arm("broker-relay", { concurrency: 8 }, { relayForwardedPerSec: 950 }),
              arm("no-notify", { concurrency: 16 }, { eventsPerSec: 2_000 }),
              arm("broker-relay", { concurrency: 16 }, { relayForwardedPerSec: 1_000 }, [
                "relay-backlog-growing",
              ]),
            ],
          },
          {
            id: "relay",
            title: "r",
            method: [],
            durationMs: 1,
            notes: [],
            blocks: [],
            arms: relayArms,
            derived,
          },
        ],
      },
      { chartsPath: "c", jsonPath: "r.json", command: "pnpm bench" },
    )
    const md = r.markdown
    expect(md).toContain("### Issue targets: the flip pays")
    expect(md).toMatch(
      /Relay never behind in the knee scenario up to C=32: measured at C=8, 16; behind at C=16 → \*\*not met\*\*/,
    )
    expect(md).toMatch(
      /C=8 950 forwarded to the broker vs 1,000 no-NOTIFY events\/s = 0\.95×; C=16 .* = 0\.50×; C=32 not measured → \*\*not measured\*\*/,
    )
    expect(md).toMatch(
      /nats: 25,000 → 11,000\/s, 50,000 → 11,000\/s, 100,000 → 12,000\/s .* rate \*\*met\*\*, flat \*\*met\*\*/,
    )
    expect(md).toMatch(/redis-streams: .* rate \*\*not met\*\*, flat \*\*not met\*\*/)
    expect(md).toMatch(
      /nats committed mid-drain 44(\.0)? ms .* \*\*met\*\*; redis-streams committed mid-drain 2\.75 s .* \*\*not met\*\*/,
    )
    expect(md).toContain("Commit → handler p99 at 1,000 events/s ≤ 10 ms on NATS and Redis: **not measured**")
    expect(md).toMatch(
      /nats 110 vs 100 µs\/event \(net of idle background\) = 1\.10× \(gross –\) → \*\*met\*\*; redis-streams 150 vs 100 µs\/event \(net of idle background\) = 1\.50× \(gross –\) → \*\*not met\*\*/,
    )
    expect(md).toContain("## 9. The relay")
  })

  it("marks quick runs", () => {
    const r = renderReport(run(true), { chartsPath: "c", jsonPath: "r.json", command: "pnpm bench --quick" })
    expect(r.markdown).toContain("QUICK RUN")
  })

  it("draws charts deterministically and survives missing data", () => {
    const chart = () =>
      lineChart({
        title: "t",
        xLabel: "x",
        yLabel: "y",
        logX: true,
        series: [
          {
            name: "a",
            points: [
              { x: 1, y: 2 },
              { x: 10, y: 5 },
            ],
          },
        ],
        markers: [{ x: 10, label: "knee" }],
      })
    expect(chart()).toBe(chart())
    expect(chart()).toContain("knee")
    expect(lineChart({ title: "t", xLabel: "x", yLabel: "y", series: [] })).toContain("no data")
    const bars = barChart({
      title: "t",
      xLabel: "x",
      bars: [
        { label: "a<b", value: Number.NaN },
        { label: "c", value: 2 },
      ],
    })
    expect(bars).toContain("a&lt;b")
    expect(bars).toContain("n/a")
    expect(linearTicks(0, 10)).toEqual([0, 2, 4, 6, 8, 10])
    expect(logTicks(1, 1000)).toEqual([1, 10, 100, 1000])
  })
})
