import { fmtMs, fmtNum } from "../harness/progress.js"
import type { Spread } from "../harness/stats.js"
import type { ArmSummary, RunResult, ScenarioResult } from "../harness/types.js"
import { barChart, lineChart, type Series } from "./svg.js"

/**
 * Renders a run as the markdown report (docs/benchmarks.md) and its SVG charts. Pure:
 * the same run always gives the same text.
 */

export interface Rendered {
  readonly markdown: string
  /** File name (relative to the charts directory) → SVG text. */
  readonly svgs: Readonly<Record<string, string>>
}

export interface RenderOptions {
  /** Path of the charts directory as seen from the markdown file. */
  readonly chartsPath: string
  /** Path of the JSON results as seen from the markdown file. */
  readonly jsonPath: string
  readonly command: string
}

type Fmt = (n: number) => string

const fmtInt: Fmt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en") : "–")
const fmtRatio: Fmt = (n) => (Number.isFinite(n) ? `${n.toFixed(2)}×` : "–")
const fmtBytes: Fmt = (n) =>
  Number.isFinite(n) ? (Math.abs(n) >= 10_240 ? `${(n / 1024).toFixed(1)} KiB` : `${Math.round(n)} B`) : "–"

/** `median (min–max)` when there are several blocks, else the value. */
export const cell = (s: Spread | undefined, fmt: Fmt): string => {
  if (s === undefined || s.n === 0 || !Number.isFinite(s.median)) return "–"
  if (s.n === 1 || s.min === s.max) return fmt(s.median)
  return `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`
}

const med = (a: ArmSummary | undefined, key: string): number => a?.metrics[key]?.median ?? Number.NaN

const blocksCell = (a: ArmSummary): string =>
  a.saturatedBlocks > 0
    ? `${a.blocks} ⚠ ${a.saturatedBlocks} saturated (${a.flags.join(", ")})`
    : `${a.blocks}`

const table = (head: readonly string[], rows: ReadonlyArray<readonly string[]>): string =>
  [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.map((c) => c.replace(/\|/g, "\\|")).join(" | ")} |`),
  ].join("\n")

const ok = (arms: readonly ArmSummary[]) => arms.filter((a) => a.status === "ok")

const notMeasured = (arms: readonly ArmSummary[]): string[] =>
  arms
    .filter((a) => a.status !== "ok")
    .map(
      (a) =>
        `- ${a.label}: ${a.status === "not-available" ? "not available" : "not measured"}: ${a.reason ?? "?"}`,
    )

const pipeName = (a: ArmSummary): string => String(a.params.pipe ?? a.transport)

class Charts {
  readonly svgs: Record<string, string> = {}
  constructor(readonly path: string) {}
  add(name: string, svg: string, alt: string): string {
    this.svgs[name] = svg
    return `![${alt}](${this.path}/${name})`
  }
}

const method = (s: ScenarioResult): string => s.method.map((m) => `- ${m}`).join("\n")

const renderThroughput = (s: ScenarioResult, charts: Charts): string[] => {
  const out: string[] = []
  const arms = ok(s.arms)
  out.push(
    table(
      [
        "path",
        "delivered events/s",
        "commits/s",
        "p99 (closed loop)",
        "CPU µs/event (bench process)",
        "Postgres CPU µs/event",
        "blocks",
      ],
      arms.map((a) => [
        a.label,
        cell(a.metrics.deliveredPerSec, fmtInt),
        cell(a.metrics.committedPerSec, fmtInt),
        cell(a.metrics.p99, fmtMs),
        cell(a.metrics.cpuUsPerEvent, fmtNum),
        cell(a.metrics["cpuServerUsPerEvent.postgres"], fmtNum),
        blocksCell(a),
      ]),
    ),
  )
  const ratios = (s.derived?.ratios ?? {}) as Record<
    string,
    { sdkPerSec: number; rawPerSec: number; throughputRatio: number; cpuPerEventRatio: number }
  >
  const keys = Object.keys(ratios)
  if (keys.length > 0) {
    out.push(
      "",
      "SDK against the raw client (medians):",
      "",
      table(
        [
          "transport",
          "SDK events/s",
          "raw events/s",
          "throughput SDK/raw",
          "CPU per event SDK/raw (bench process)",
        ],
        keys.map((k) => {
          const r = ratios[k] as {
            sdkPerSec: number
            rawPerSec: number
            throughputRatio: number
            cpuPerEventRatio: number
          }
          return [
            k,
            fmtInt(r.sdkPerSec),
            fmtInt(r.rawPerSec),
            fmtRatio(r.throughputRatio),
            fmtRatio(r.cpuPerEventRatio),
          ]
        }),
      ),
      "",
      charts.add(
        "throughput-ratio.svg",
        barChart({
          title: "Throughput, SDK ÷ raw client",
          subtitle: "median of the blocks; 1.0 = as fast as the raw client",
          xLabel: "SDK events/s ÷ raw events/s",
          bars: keys.map((k, i) => ({
            label: k,
            value: (ratios[k] as { throughputRatio: number }).throughputRatio,
            group: i,
          })),
          reference: { value: 1, label: "raw" },
        }),
        "throughput ratio SDK/raw",
      ),
    )
  }
  out.push(
    "",
    charts.add(
      "throughput.svg",
      barChart({
        title: "Delivered events/s (closed loop)",
        subtitle: "median, whiskers min–max over blocks",
        xLabel: "events/s",
        bars: arms.map((a) => ({
          label: a.label.replace(/ producers=\d+/, ""),
          value: med(a, "deliveredPerSec"),
          lo: a.metrics.deliveredPerSec?.min,
          hi: a.metrics.deliveredPerSec?.max,
          text: fmtInt(med(a, "deliveredPerSec")),
          group: a.variant === "raw" ? 1 : 0,
        })),
      }),
      "delivered events per second",
    ),
  )
  return out
}

const renderLatency = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms)
  const out: string[] = [
    table(
      [
        "path",
        "rate/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "commit p99",
        "lag p99",
        "CPU µs/event",
        "blocks",
      ],
      arms.map((a) => [
        a.label.replace(/ rate=\d+/, ""),
        String(a.params.rate),
        cell(a.metrics.p50, fmtMs),
        cell(a.metrics.p90, fmtMs),
        cell(a.metrics.p99, fmtMs),
        cell(a.metrics.p999, fmtMs),
        cell(a.metrics.max, fmtMs),
        cell(a.metrics.commitP99, fmtMs),
        cell(a.metrics.lagP99, fmtMs),
        cell(a.metrics.cpuUsPerEvent, fmtNum),
        blocksCell(a),
      ]),
    ),
  ]
  const pipes = [...new Set(arms.map(pipeName))]
  const series: Series[] = pipes.map((p) => ({
    name: p,
    dashed: p.startsWith("raw"),
    points: arms
      .filter((a) => pipeName(a) === p)
      .map((a) => ({
        x: Number(a.params.rate),
        y: med(a, "p99"),
        lo: a.metrics.p99?.min,
        hi: a.metrics.p99?.max,
      }))
      .sort((a, b) => a.x - b.x),
  }))
  out.push(
    "",
    charts.add(
      "latency-p99.svg",
      lineChart({
        title: "p99 latency, intended send → handler",
        subtitle: "open loop; median of blocks, whiskers min–max",
        xLabel: "offered rate (events/s)",
        yLabel: "p99 latency (ms)",
        series,
        logX: true,
        logY: true,
      }),
      "p99 latency by rate",
    ),
  )
  const ratios = (s.derived?.ratios ?? {}) as Record<string, { p50Ratio: number; p99Ratio: number }>
  if (Object.keys(ratios).length > 0) {
    out.push(
      "",
      "SDK against the raw client:",
      "",
      table(
        ["transport @ rate", "p50 SDK/raw", "p99 SDK/raw"],
        Object.entries(ratios).map(([k, r]) => [k, fmtRatio(r.p50Ratio), fmtRatio(r.p99Ratio)]),
      ),
    )
  }
  return out
}

const modeOrder = [
  "no-notify",
  "trigger-per-row",
  "coalesced",
  "after-commit",
  "broker-relay",
  "sdk-coalesced",
]

const renderKnee = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms)
  const d = (s.derived ?? {}) as {
    series?: Record<string, Array<{ c: number; commits: number; p99: number }>>
    knees?: Record<string, number | null>
    flip?: { concurrency: number; notifyingCommitsPerSec: number; gain: number; against: string } | null
    relayKeptUp?: boolean | null
  }
  const conc = [...new Set(arms.map((a) => Number(a.params.concurrency)))].sort((a, b) => a - b)
  const modes = modeOrder.filter((m) => arms.some((a) => a.variant === m))
  const labelOf = (m: string) => (arms.find((a) => a.variant === m)?.label ?? m).replace(/ c=\d+$/, "")
  const out: string[] = []
  out.push(
    "Commits per second (median, min–max over blocks):",
    "",
    table(
      ["mode", ...conc.map((c) => `C=${c}`), "knee"],
      modes.map((m) => [
        labelOf(m),
        ...conc.map((c) => {
          const a = arms.find((x) => x.variant === m && Number(x.params.concurrency) === c)
          return a === undefined
            ? "–"
            : `${cell(a.metrics.commitsPerSec, fmtInt)}${a.saturatedBlocks > 0 ? " ⚠" : ""}`
        }),
        d.knees?.[m] ? `C=${d.knees[m]}` : "none in range",
      ]),
    ),
    "",
    "Transaction p99 (BEGIN → COMMIT returned, ms):",
    "",
    table(
      ["mode", ...conc.map((c) => `C=${c}`)],
      modes.map((m) => [
        labelOf(m),
        ...conc.map((c) =>
          cell(arms.find((x) => x.variant === m && Number(x.params.concurrency) === c)?.metrics.p99, fmtMs),
        ),
      ]),
    ),
  )
  out.push(
    "",
    "Client CPU per commit (µs of the benchmark process, which also runs each mode's LISTEN connection; median):",
    "",
    table(
      ["mode", ...conc.map((c) => `C=${c}`)],
      modes.map((m) => [
        labelOf(m),
        ...conc.map((c) =>
          cell(
            arms.find((x) => x.variant === m && Number(x.params.concurrency) === c)?.metrics.cpuUsPerCommit,
            fmtInt,
          ),
        ),
      ]),
    ),
  )
  // The SDK's own cost: "SDK publish (coalesced)" against the same-shape plain SQL
  // ("coalesced NOTIFY"), measured in the same run.
  const sdkVsPlain = conc.flatMap((c) => {
    const sdk = arms.find((x) => x.variant === "sdk-coalesced" && Number(x.params.concurrency) === c)
    const plain = arms.find((x) => x.variant === "coalesced" && Number(x.params.concurrency) === c)
    if (sdk === undefined || plain === undefined) return []
    return [
      [
        `C=${c}`,
        fmtRatio(med(sdk, "commitsPerSec") / med(plain, "commitsPerSec")),
        fmtRatio(med(sdk, "cpuUsPerCommit") / med(plain, "cpuUsPerCommit")),
      ],
    ]
  })
  if (sdkVsPlain.length > 0) {
    out.push(
      "",
      "SDK publish against the same-shape plain SQL (coalesced NOTIFY), this run (targets: commits/s ≥ 0.9×, client CPU per commit ≤ 1.15×):",
      "",
      table(["writers", "commits/s SDK ÷ plain", "client CPU per commit SDK ÷ plain"], sdkVsPlain),
    )
  }
  const seriesOf = (key: "commits" | "p99"): Series[] =>
    modes.map((m) => ({
      name: labelOf(m).replace(/ \(.*\)$/, ""),
      dashed: m === "no-notify",
      points: arms
        .filter((a) => a.variant === m)
        .map((a) => {
          const metric = key === "commits" ? "commitsPerSec" : "p99"
          return {
            x: Number(a.params.concurrency),
            y: med(a, metric),
            lo: a.metrics[metric]?.min,
            hi: a.metrics[metric]?.max,
          }
        })
        .sort((a, b) => a.x - b.x),
    }))
  const markers: Array<{ x: number; label: string }> = []
  const coalescedKnee = d.knees?.coalesced
  if (coalescedKnee) markers.push({ x: coalescedKnee, label: `knee (coalesced) C=${coalescedKnee}` })
  if (d.flip) markers.push({ x: d.flip.concurrency, label: `flip pays C=${d.flip.concurrency}` })
  out.push(
    "",
    charts.add(
      "knee-commits.svg",
      lineChart({
        title: "Commit throughput by concurrent writers",
        subtitle: "closed loop, median of blocks; knee = adding writers adds < 15 %",
        xLabel: "concurrent writing transactions",
        yLabel: "commits/s",
        series: seriesOf("commits"),
        logX: true,
        markers,
      }),
      "commits per second by concurrency",
    ),
    "",
    charts.add(
      "knee-p99.svg",
      lineChart({
        title: "Transaction p99 by concurrent writers",
        xLabel: "concurrent writing transactions",
        yLabel: "p99 BEGIN→COMMIT (ms)",
        series: seriesOf("p99"),
        logX: true,
        logY: true,
        markers,
      }),
      "p99 by concurrency",
    ),
  )
  const relay = arms.filter((a) => a.variant === "broker-relay")
  if (relay.length > 0) {
    out.push(
      "",
      "The relay in the broker mode (forwarding while the writers commit):",
      "",
      table(
        [
          "C",
          "events inserted/s",
          "relay forwarded/s",
          "partition read, mean",
          "partition reads per block",
          "backlog at block end",
        ],
        relay.map((a) => [
          String(a.params.concurrency),
          cell(a.metrics.eventsPerSec, fmtInt),
          cell(a.metrics.relayForwardedPerSec, fmtInt),
          cell(a.metrics.relayReadMeanMs, fmtMs),
          cell(a.metrics.relayReads, fmtInt),
          cell(a.metrics.relayBacklog, fmtInt),
        ]),
      ),
    )
  }
  out.push("")
  if (d.relayKeptUp === false) {
    out.push(
      "**The relay did not keep up** with the writers in some broker blocks (⚠ relay-backlog-growing): the commit rates of those blocks are not rates the broker path sustains end to end, so they are left out of the flip point below.",
      "",
    )
  }
  if (d.flip) {
    out.push(
      `**Where the flip pays on this machine:** from C=${d.flip.concurrency} concurrent writers, where coalesced NOTIFY commits ${fmtInt(d.flip.notifyingCommitsPerSec)}/s and ${d.flip.against === "broker-relay" ? "the broker path commits" : "the same writes without NOTIFY commit"} ${fmtRatio(d.flip.gain)} as much. A \`notifyRateThreshold\` near ${fmtInt(d.flip.notifyingCommitsPerSec)} notifying commits/s matches this measurement (the shipped default is 1,000).`,
    )
  } else if (d.series?.coalesced) {
    out.push(
      "**Flip point:** no concurrency in the measured range where the broker path (or no NOTIFY) commits ≥ 20 % more than coalesced NOTIFY.",
    )
  }
  return out
}

const renderDbLoad = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms)
  const idle = arms.filter((a) => a.params.mode === "idle")
  const load = arms.filter((a) => a.params.mode !== "idle")
  const out: string[] = []
  if (idle.length > 0) {
    out.push(
      "Idle subscribers:",
      "",
      table(
        ["arm", "subscribers", "queries/min", "blocks"],
        idle.map((a) => [
          a.label,
          String(a.params.subscribers),
          cell(a.metrics.queriesPerMin, fmtNum),
          blocksCell(a),
        ]),
      ),
      "",
      charts.add(
        "dbload-idle.svg",
        barChart({
          title: "Database statements per minute, idle subscribers",
          subtitle: "log scale",
          xLabel: "queries/min",
          logX: true,
          bars: idle.map((a) => ({
            label: a.label.replace(/ \(SDK.*?\)/, "").replace(/, /, " · "),
            value: Math.max(med(a, "queriesPerMin"), 0.1),
            text: fmtNum(med(a, "queriesPerMin")),
            group: a.variant === "poll" ? 1 : 0,
          })),
        }),
        "idle queries per minute",
      ),
    )
  }
  if (load.length > 0) {
    out.push(
      "",
      "Under load:",
      "",
      table(
        ["arm", "queries/event (subscriber side)", "producer queries/event", "p99 latency", "blocks"],
        load.map((a) => [
          a.label,
          cell(a.metrics.queriesPerEvent, fmtNum),
          cell(a.metrics.producerQueriesPerEvent, fmtNum),
          cell(a.metrics.p99, fmtMs),
          blocksCell(a),
        ]),
      ),
    )
  }
  const top = (s.derived?.topQueries ?? {}) as Record<string, Array<{ calls: number; query: string }>>
  if (Object.keys(top).length > 0) {
    out.push("", "<details><summary>Statements each arm ran (top by calls, last window)</summary>", "")
    for (const [arm, qs] of Object.entries(top)) {
      out.push(`**${arm}**`, "", ...qs.map((q) => `- ${q.calls} × \`${q.query.replace(/`/g, "'")}\``), "")
    }
    out.push("</details>")
  }
  return out
}

interface FanoutTargetRow {
  readonly target: string
  readonly on: string
  readonly measured: number
  readonly unit: "ratio" | "µs" | "ms" | "bytes" | "count"
  readonly limit: number
  readonly met: boolean
  readonly saturated?: boolean
}

const fmtTarget = (n: number, unit: FanoutTargetRow["unit"]): string =>
  unit === "ratio"
    ? fmtRatio(n)
    : unit === "µs"
      ? Number.isFinite(n)
        ? `${n.toFixed(1)} µs`
        : "–"
      : unit === "ms"
        ? fmtMs(n)
        : unit === "bytes"
          ? fmtBytes(n)
          : fmtInt(n)

const renderFanout = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms).filter((a) => a.variant !== "sse")
  const sse = ok(s.arms).filter((a) => a.variant === "sse")
  const targets = ((s.derived?.targets ?? []) as ReadonlyArray<FanoutTargetRow>).map((t) => [
    t.target,
    t.on,
    `${t.unit === "count" ? "=" : "≤"} ${fmtTarget(t.limit, t.unit)}`,
    fmtTarget(t.measured, t.unit),
    (t.met ? "met" : "**not met**") + (t.saturated === true ? " ⚠ saturated block" : ""),
  ])
  const out: string[] = []
  if (targets.length > 0)
    out.push(
      "Targets (issue 18) beside the figures measured in this run:",
      "",
      table(["target", "measured on", "target", "measured", ""], targets),
      "",
    )
  if (sse.length > 0)
    out.push(
      table(
        [
          "SSE arm",
          "clients",
          "rate/s",
          "p50",
          "p99",
          "max",
          "lost",
          "duplicates",
          "heap per client",
          "RSS per client",
          "connect (all live)",
          "CPU µs/delivery",
          "blocks",
        ],
        sse.map((a) => [
          a.label,
          String(a.params.subscribers),
          String(a.params.rate),
          cell(a.metrics.p50, fmtMs),
          cell(a.metrics.p99, fmtMs),
          cell(a.metrics.max, fmtMs),
          cell(a.metrics.lost, fmtInt),
          cell(a.metrics.duplicates, fmtInt),
          cell(a.metrics.heapBytesPerClient, fmtBytes),
          cell(a.metrics.rssBytesPerClient, fmtBytes),
          cell(a.metrics.connectMs, fmtMs),
          cell(a.metrics.cpuUsPerEvent, fmtNum),
          blocksCell(a),
        ]),
      ),
      "",
    )
  out.push(
    table(
      [
        "transport",
        "subscribers",
        "rate/s",
        "deliveries/s",
        "p50",
        "p99",
        "max",
        "heap per subscriber",
        "CPU µs/delivery",
        "setup",
        "blocks",
      ],
      arms.map((a) => [
        a.variant === "target" ? `${pipeName(a)} (target arm)` : pipeName(a),
        String(a.params.subscribers),
        String(a.params.rate),
        cell(a.metrics.deliveredPerSec, fmtInt),
        cell(a.metrics.p50, fmtMs),
        cell(a.metrics.p99, fmtMs),
        cell(a.metrics.max, fmtMs),
        cell(a.metrics.heapBytesPerSubscriber, fmtBytes),
        cell(a.metrics.cpuUsPerEvent, fmtNum),
        cell(a.metrics.setupMs, fmtMs),
        blocksCell(a),
      ]),
    ),
  )
  const sweep = arms.filter((a) => a.variant === "sdk")
  const pipes = [...new Set(sweep.map(pipeName))]
  const seriesFor = (metric: string): Series[] =>
    pipes.map((p) => ({
      name: p,
      points: sweep
        .filter((a) => pipeName(a) === p)
        .map((a) => ({ x: Number(a.params.subscribers), y: med(a, metric) }))
        .filter((pt) => pt.y > 0)
        .sort((a, b) => a.x - b.x),
    }))
  out.push(
    "",
    charts.add(
      "fanout-p99.svg",
      lineChart({
        title: "Fan-out: p99 delivery latency",
        xLabel: "subscribers of one channel",
        yLabel: "p99 (ms)",
        series: seriesFor("p99"),
        logX: true,
        logY: true,
      }),
      "fan-out p99",
    ),
    "",
    charts.add(
      "fanout-memory.svg",
      lineChart({
        title: "Fan-out: heap per subscriber",
        xLabel: "subscribers of one channel",
        yLabel: "bytes per subscriber",
        series: seriesFor("heapBytesPerSubscriber"),
        logX: true,
        logY: true,
      }),
      "heap per subscriber",
    ),
  )
  return out
}

const renderPayload = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms)
  const out = [
    table(
      ["path", "data bytes", "p50", "p99", "max", "CPU µs/event", "Postgres CPU µs/event", "blocks"],
      arms.map((a) => [
        a.label.replace(/ \d+ B$/, ""),
        String(a.params.payloadBytes),
        cell(a.metrics.p50, fmtMs),
        cell(a.metrics.p99, fmtMs),
        cell(a.metrics.max, fmtMs),
        cell(a.metrics.cpuUsPerEvent, fmtNum),
        cell(a.metrics["cpuServerUsPerEvent.postgres"], fmtNum),
        blocksCell(a),
      ]),
    ),
  ]
  const pipes = [...new Set(arms.map(pipeName))]
  out.push(
    "",
    charts.add(
      "payload-p99.svg",
      lineChart({
        title: "p99 latency by payload size",
        xLabel: "event data (bytes)",
        yLabel: "p99 (ms)",
        series: pipes.map((p) => ({
          name: p,
          dashed: p.startsWith("raw"),
          points: arms
            .filter((a) => pipeName(a) === p)
            .map((a) => ({ x: Number(a.params.payloadBytes), y: med(a, "p99") }))
            .sort((a, b) => a.x - b.x),
        })),
        logX: true,
        logY: true,
      }),
      "p99 by payload size",
    ),
  )
  return out
}

const renderRecovery = (s: ScenarioResult): string[] => {
  const arms = ok(s.arms)
  return [
    table(
      [
        "transport",
        "fault",
        "committed",
        "lost",
        "duplicates",
        "catch-up after the fault",
        "max latency",
        "p99 before the fault",
        "blocks",
      ],
      arms.map((a) => [
        pipeName(a),
        `${a.params.fault} for ${Number(a.params.outageMs) / 1000} s`,
        cell(a.metrics.committed, fmtInt),
        cell(a.metrics.lost, fmtInt),
        cell(a.metrics.duplicates, fmtInt),
        cell(a.metrics.catchUpMs, fmtMs),
        cell(a.metrics.max, fmtMs),
        cell(a.metrics.p99BeforeFault, fmtMs),
        blocksCell(a),
      ]),
    ),
  ]
}

/** NATS fan-out (issue 18 item 5): each target beside the measured figure. */
const renderNatsFanout = (s: ScenarioResult): string[] => {
  const arms = ok(s.arms)
  const single = arms.find((a) => Number(a.params.subscribers) === 1)
  const singleP99 = med(single, "p99")
  return [
    table(
      [
        "subscribers",
        "rate/s",
        "setup",
        "setup target",
        "JetStream consumers (server)",
        "consumers target",
        "p50",
        "p99",
        "p99 ÷ 1 subscriber",
        "heap per subscriber",
        "blocks",
      ],
      arms.map((a) => {
        const n = Number(a.params.subscribers)
        return [
          n.toLocaleString("en"),
          String(a.params.rate),
          cell(a.metrics.setupMs, fmtMs),
          n >= 10_000 ? "≤ 5 s" : "–",
          cell(a.metrics.consumers, fmtInt),
          "1",
          cell(a.metrics.p50, fmtMs),
          cell(a.metrics.p99, fmtMs),
          n === 1 ? "1.00×" : fmtRatio(med(a, "p99") / singleP99),
          cell(a.metrics.heapBytesPerSubscriber, fmtBytes),
          blocksCell(a),
        ]
      }),
    ),
    "",
    "Before (issue 18): one JetStream consumer per subscription; 10,000 subscribers took 45 s to set up and saw p99 ~10 s.",
  ]
}

/** Section 9: the relay (issue 12): backlog drain per size, quiet-tenant waits, Postgres CPU per event. */
const renderRelay = (s: ScenarioResult): string[] => {
  const arms = ok(s.arms)
  const drains = arms.filter((a) => a.variant === "drain")
  const cpu = arms.filter((a) => a.variant === "insert-alone" || a.variant === "broker-path")
  const out: string[] = []
  if (drains.length > 0)
    out.push(
      table(
        [
          "broker",
          "backlog",
          "forwarded events/s (10–90 %)",
          "drain time",
          "first event out",
          "quiet event, preloaded (wait from start)",
          "quiet event, committed mid-drain (commit → broker)",
          "Postgres CPU µs/forwarded event",
          "blocks",
        ],
        drains.map((a) => [
          pipeName(a),
          fmtInt(Number(a.params.backlog)),
          cell(a.metrics.forwardedPerSec, fmtInt),
          cell(a.metrics.drainMs, fmtMs),
          cell(a.metrics.firstForwardMs, fmtMs),
          `${cell(a.metrics.quietPreloadedMs, fmtMs)} (after ${cell(a.metrics.busyBeforeQuietPreloaded, fmtInt)} backlog events)`,
          `${cell(a.metrics.quietDuringDrainMs, fmtMs)} (committed at ${cell(a.metrics.busyAtQuietCommit, fmtInt)} out)`,
          cell(a.metrics["cpuServerUsPerEvent.postgres"], fmtNum),
          blocksCell(a),
        ]),
      ),
    )
  if (cpu.length > 0)
    out.push(
      "",
      "Postgres CPU per event, the producer's INSERT alone against the broker path, at the same rate:",
      "",
      table(
        [
          "path",
          "rate/s",
          "committed",
          "forwarded",
          "Postgres CPU µs/event",
          "net of idle background",
          "÷ INSERT alone (net)",
          "blocks",
        ],
        cpu.map((a) => {
          const insert = cpu.find((x) => x.variant === "insert-alone")
          return [
            a.label.replace(/ @\d+\/s$/, ""),
            String(a.params.rate),
            cell(a.metrics.committed, fmtInt),
            a.variant === "insert-alone" ? "–" : cell(a.metrics.forwarded, fmtInt),
            cell(a.metrics.pgUsPerEvent, fmtNum),
            cell(a.metrics.pgUsPerEventNet, fmtNum),
            a.variant === "insert-alone"
              ? "1.00×"
              : fmtRatio(med(a, "pgUsPerEventNet") / med(insert, "pgUsPerEventNet")),
            blocksCell(a),
          ]
        }),
      ),
    )
  return out
}

/** Figures of the relay scenario's `derived`, per broker. */
interface RelayDerived {
  readonly brokers?: Record<
    string,
    {
      rates: Record<string, number>
      largestBacklog: number | null
      rateAtLargest: number
      flatness: number
      quietDuringDrainMaxMs: number
      quietPreloadedMaxMs: number
      pathPgUsPerEvent: number
      insertPgUsPerEvent: number
      cpuRatio: number
      cpuRatioGross?: number
    }
  >
}

const verdict = (met: boolean | undefined): string =>
  met === undefined ? "**not measured**" : met ? "**met**" : "**not met**"

/**
 * The targets of issue 12 ("the flip must pay"), each beside the figure measured in this
 * run, met or not. A figure the run did not measure says so.
 */
const issueTargets = (run: RunResult): string[] => {
  const sc = (id: string) => run.scenarios.find((s) => s.id === id)
  const out: string[] = ["### Issue targets: the flip pays", ""]
  const fin = (n: number) => Number.isFinite(n)

  // 1. Knee: relay never behind up to C=32; broker path ≥ 0.9× the no-NOTIFY commit rate at C=8,16,32.
  const knee = sc("knee")
  if (knee === undefined) {
    out.push(
      "- Relay never behind in the knee scenario up to C=32: **not measured** (knee not run).",
      "- Broker path end-to-end ≥ 0.9× the no-NOTIFY commit rate (events) at C=8, 16, 32: **not measured** (knee not run).",
    )
  } else {
    const kneeArms = ok(knee.arms)
    const broker = kneeArms.filter((a) => a.variant === "broker-relay" && Number(a.params.concurrency) <= 32)
    const behindFlag = (f: string) => /relay|behind|backlog/i.test(f)
    const behindAt = broker.filter((a) => a.flags.some(behindFlag)).map((a) => Number(a.params.concurrency))
    const cs = broker.map((a) => Number(a.params.concurrency)).sort((a, b) => a - b)
    const upTo32 = cs.includes(32)
    out.push(
      broker.length === 0
        ? "- Relay never behind in the knee scenario up to C=32: **not measured** (no broker-relay arm)."
        : `- Relay never behind in the knee scenario up to C=32: measured at C=${cs.join(", ")}; behind at ${behindAt.length > 0 ? `C=${behindAt.join(", ")}` : "none"} → ${behindAt.length > 0 ? verdict(false) : upTo32 ? verdict(true) : "**not measured up to C=32** (none behind where measured)"}.`,
    )
    const parts: string[] = []
    let all: boolean | undefined = true
    for (const c of [8, 16, 32]) {
      const b = broker.find((a) => Number(a.params.concurrency) === c)
      const nn = kneeArms.find((a) => a.variant === "no-notify" && Number(a.params.concurrency) === c)
      const deliveredKey =
        b?.metrics.deliveredPerSec !== undefined ? "deliveredPerSec" : "relayForwardedPerSec"
      const got = med(b, deliveredKey)
      const ref = med(nn, "eventsPerSec")
      if (!fin(got) || !fin(ref)) {
        parts.push(`C=${c} not measured`)
        all = undefined
        continue
      }
      const r = got / ref
      parts.push(
        `C=${c} ${fmtInt(got)} ${deliveredKey === "deliveredPerSec" ? "delivered" : "forwarded to the broker"} vs ${fmtInt(ref)} no-NOTIFY events/s = ${fmtRatio(r)}`,
      )
      if (all !== undefined && r < 0.9) all = false
    }
    out.push(
      `- Broker path end-to-end delivered events/s ≥ 0.9× the no-NOTIFY commit rate (events) at C=8, 16, 32: ${parts.join("; ")} → ${verdict(all)}.`,
    )
  }

  // 2. Backlog drain and quiet event (relay scenario).
  const rel = sc("relay")?.derived as RelayDerived | undefined
  const brokers = Object.entries(rel?.brokers ?? {})
  if (brokers.length === 0) {
    out.push(
      "- Relay forwarding a 100,000-event backlog ≥ 10,000 events/s, flat in backlog size: **not measured** (relay scenario not run).",
      "- Quiet event forwarded within one relay round (< 1 s) during the drain: **not measured** (relay scenario not run).",
    )
  } else {
    const parts = brokers.map(([t, b]) => {
      const largest = b.largestBacklog ?? Number.NaN
      const met = fin(b.rateAtLargest) && largest >= 100_000 ? b.rateAtLargest >= 10_000 : undefined
      const flat = fin(b.flatness) ? b.flatness <= 0.2 : undefined
      return `${t}: ${Object.entries(b.rates)
        .map(([n, r]) => `${fmtInt(Number(n))} → ${fmtInt(r)}/s`)
        .join(
          ", ",
        )} (largest deviation from the median ${fin(b.flatness) ? `${Math.round(b.flatness * 100)} %` : "–"}) → rate ${largest >= 100_000 ? verdict(met) : `**not measured at 100,000** (largest backlog ${fmtInt(largest)})`}, flat ${verdict(flat)}`
    })
    out.push(
      `- Relay forwarding a 100,000-event backlog ≥ 10,000 events/s, flat in backlog size (±20 %): ${parts.join("; ")}.`,
    )
    const quiet = brokers.map(([t, b]) => {
      const met = fin(b.quietDuringDrainMaxMs) ? b.quietDuringDrainMaxMs < 1_000 : undefined
      return `${t} committed mid-drain ${fmtMs(b.quietDuringDrainMaxMs)} (worst block), preloaded ${fmtMs(b.quietPreloadedMaxMs)} from the relay's start → ${fin(b.quietDuringDrainMaxMs) ? verdict(met) : "**not met** (not forwarded within the drain timeout)"}`
    })
    out.push(`- Quiet event forwarded within one relay round (< 1 s) during the drain: ${quiet.join("; ")}.`)
  }

  // 3. Latency at 1,000 and 5,000 events/s (latency scenario).
  const lat = sc("latency")
  if (lat === undefined) {
    out.push(
      "- Commit → handler p99 at 1,000 events/s ≤ 10 ms on NATS and Redis: **not measured** (latency not run).",
      "- No saturation at 5,000 events/s on NATS and Redis: **not measured** (latency not run).",
    )
  } else {
    const sdkAt = (t: string, rate: number) =>
      ok(lat.arms).find((a) => a.variant === "sdk" && pipeName(a) === t && Number(a.params.rate) === rate)
    const p99 = ["nats", "redis-streams"].map((t) => {
      const a = sdkAt(t, 1_000)
      return a === undefined
        ? `${t} not measured`
        : `${t} ${fmtMs(med(a, "p99"))} → ${verdict(med(a, "p99") <= 10)}`
    })
    out.push(`- Commit → handler p99 at 1,000 events/s ≤ 10 ms: ${p99.join("; ")}.`)
    const sat = ["nats", "redis-streams"].map((t) => {
      const a = sdkAt(t, 5_000)
      return a === undefined
        ? `${t} not measured`
        : `${t} p99 ${fmtMs(med(a, "p99"))}, ${a.saturatedBlocks}/${a.blocks} blocks saturated${a.flags.length > 0 ? ` (${a.flags.join(", ")})` : ""} → ${verdict(a.saturatedBlocks === 0)}`
    })
    out.push(`- No saturation at 5,000 events/s: ${sat.join("; ")}.`)
  }

  // 4. Postgres CPU per event, broker path ÷ INSERT alone (relay scenario).
  if (brokers.length === 0) {
    out.push(
      "- Postgres CPU per event on the broker path ≤ 1.2× the producer's INSERT alone: **not measured**.",
    )
  } else {
    const parts = brokers.map(
      ([t, b]) =>
        `${t} ${fmtNum(b.pathPgUsPerEvent)} vs ${fmtNum(b.insertPgUsPerEvent)} µs/event (net of idle background) = ${fmtRatio(b.cpuRatio)}${b.cpuRatioGross !== undefined ? ` (gross ${fmtRatio(b.cpuRatioGross)})` : ""} → ${verdict(fin(b.cpuRatio) ? b.cpuRatio <= 1.2 : undefined)}`,
    )
    out.push(
      `- Postgres CPU per event on the broker path ≤ 1.2× the producer's INSERT alone: ${parts.join("; ")}.`,
    )
  }
  if (run.quick)
    out.push("", "_Quick run: short blocks; these verdicts are a smoke test, not the measurement._")
  return out
}

/** Section 10: relay scaling (issue 16): forwarding rate with 1, 2, 3 relay processes. */
const renderRelayScaling = (s: ScenarioResult): string[] => {
  const arms = ok(s.arms)
  const one = (t: unknown) => arms.find((a) => a.params.pipe === t && Number(a.params.relays) === 1)
  return [
    table(
      [
        "broker",
        "relay processes",
        "forwarded/s",
        "÷ 1 process",
        "relay CPU per event",
        "Postgres CPU per event",
        "drain",
        "blocks",
      ],
      arms.map((a) => [
        String(a.params.pipe),
        String(a.params.relays),
        cell(a.metrics.forwardedPerSec, fmtInt),
        fmtRatio(med(a, "forwardedPerSec") / med(one(a.params.pipe), "forwardedPerSec")),
        cell(a.metrics.relayCpuUsPerEvent, (n) => `${fmtInt(n)} µs`),
        cell(a.metrics.pgUsPerEvent, (n) => `${fmtInt(n)} µs`),
        cell(a.metrics.drainMs, fmtMs),
        blocksCell(a),
      ]),
    ),
  ]
}

const renderers: Record<string, (s: ScenarioResult, charts: Charts) => string[]> = {
  throughput: renderThroughput,
  latency: renderLatency,
  knee: renderKnee,
  dbload: renderDbLoad,
  fanout: renderFanout,
  payload: renderPayload,
  recovery: (s) => renderRecovery(s),
  natsFanout: (s) => renderNatsFanout(s),
  relay: (s) => renderRelay(s),
  relayScaling: (s) => renderRelayScaling(s),
}

const headlines = (run: RunResult): string[] => {
  const out: string[] = []
  const sc = (id: string) => run.scenarios.find((s) => s.id === id)
  const tp = sc("throughput")?.derived?.ratios as
    | Record<string, { throughputRatio: number; sdkPerSec: number; rawPerSec: number }>
    | undefined
  if (tp && Object.keys(tp).length > 0) {
    out.push(
      `- Throughput SDK ÷ raw client: ${Object.entries(tp)
        .map(
          ([t, r]) =>
            `${t} ${fmtRatio(r.throughputRatio)} (${fmtInt(r.sdkPerSec)} vs ${fmtInt(r.rawPerSec)} events/s)`,
        )
        .join("; ")}.`,
    )
  }
  const lat = sc("latency")
  if (lat) {
    const at = (run.profile.latencyRates as number[] | undefined)?.[1] ?? 1000
    const parts = ok(lat.arms)
      .filter((a) => a.variant === "sdk" && Number(a.params.rate) === at)
      .map(
        (a) =>
          `${pipeName(a)} p50 ${fmtMs(med(a, "p50"))} / p99 ${fmtMs(med(a, "p99"))}${a.saturatedBlocks > 0 ? " ⚠" : ""}`,
      )
    if (parts.length > 0)
      out.push(`- Latency at ${at.toLocaleString("en")} events/s (open loop): ${parts.join("; ")}.`)
  }
  const knee = sc("knee")?.derived as
    | {
        knees?: Record<string, number | null>
        flip?: { concurrency: number; notifyingCommitsPerSec: number; gain: number; against: string } | null
      }
    | undefined
  if (knee?.knees) {
    const k = knee.knees
    out.push(
      `- Commit-lock knee: coalesced NOTIFY ${k.coalesced ? `C=${k.coalesced}` : "none in range"}, per-row trigger ${k["trigger-per-row"] ? `C=${k["trigger-per-row"]}` : "none in range"}, no NOTIFY ${k["no-notify"] ? `C=${k["no-notify"]}` : "none in range"}${knee.flip ? `; the flip pays from C=${knee.flip.concurrency} (${fmtInt(knee.flip.notifyingCommitsPerSec)} notifying commits/s; ${knee.flip.against === "broker-relay" ? "the broker path" : "commits without NOTIFY"} ${fmtRatio(knee.flip.gain)})` : ""}.`,
    )
  }
  const db = sc("dbload")
  if (db) {
    const idle = ok(db.arms).filter((a) => a.params.mode === "idle")
    const parts = idle.map(
      (a) => `${a.label.replace(/ \(SDK.*?\)/, "")}: ${fmtNum(med(a, "queriesPerMin"))}/min`,
    )
    if (parts.length > 0) out.push(`- Idle database load: ${parts.join("; ")}.`)
  }
  const rec = sc("recovery")
  if (rec) {
    const parts = ok(rec.arms).map(
      (a) =>
        `${pipeName(a)} lost ${fmtInt(a.metrics.lost?.max ?? Number.NaN)}, caught up in ${fmtMs(med(a, "catchUpMs"))}`,
    )
    if (parts.length > 0) out.push(`- Recovery: ${parts.join("; ")}.`)
  }
  return out
}

export const renderReport = (run: RunResult, o: RenderOptions): Rendered => {
  const charts = new Charts(o.chartsPath)
  const m = run.machine
  const lines: string[] = []
  lines.push("# Benchmarks: the transports compared", "")
  if (run.quick) {
    lines.push(
      "> **QUICK RUN (`--quick`)** — a smoke test of the harness: blocks of about a second, one or two per arm, on whatever else the machine was doing. Do not quote or decide anything from these numbers; the full run (`pnpm bench`) makes the report to trust.",
      "",
    )
  }
  if (run.interrupted)
    lines.push("> **Interrupted** before every scenario finished; what is below is partial.", "")
  lines.push(
    `Generated by \`${o.command}\` on ${run.startedAt.slice(0, 10)} (${run.startedAt} → ${run.finishedAt}, ${(run.durationMs / 60_000).toFixed(1)} min). Raw results: [${o.jsonPath}](${o.jsonPath}).`,
    "",
    "## Machine",
    "",
    table(
      ["", ""],
      [
        ["CPU", `${m.cpuModel} × ${m.cores} cores`],
        ["memory", `${m.memoryGiB} GiB`],
        ["OS", `${m.os} (kernel ${m.kernel})`],
        ["Node.js", m.node],
        [
          "Postgres",
          `${m.servers.postgres ?? "not started"}${
            Object.keys(m.postgresSettings).length > 0
              ? ` (${Object.entries(m.postgresSettings)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(", ")})`
              : ""
          }`,
        ],
        ["Redis", m.servers.redis ?? "not started"],
        ["NATS", m.servers.nats ?? "not started"],
        ["git commit", `${m.gitCommit}${m.gitDirty ? " (work tree had uncommitted changes)" : ""}`],
        [
          "load average at start / end",
          `${m.loadAverageStart.join(" ")} / ${(m.loadAverageEnd ?? []).join(" ")}`,
        ],
        [
          "libraries",
          Object.entries(m.packages)
            .map(([k, v]) => `${k} ${v}`)
            .join(", "),
        ],
        ["query counting", run.queryCountMethod ?? "–"],
      ],
    ),
    "",
  )
  const unavailable = Object.entries(run.transports).filter(([, v]) => !v.available)
  const heads = headlines(run)
  const targets = issueTargets(run)
  lines.push("## Headlines", "", ...heads, ...(heads.length > 0 ? [""] : []), ...targets, "")
  if (unavailable.length > 0) {
    lines.push(
      "Transports not measured in this run:",
      "",
      ...unavailable.map(([t, v]) => `- ${t}: not available: ${v.reason ?? "?"}`),
      "",
    )
  }
  lines.push(
    "## Method",
    "",
    "- Every figure comes from this one run on this machine; servers are started by `@bus/test-infra` as local processes on loopback, the harness and all clients run in one Node.js process.",
    "- Latency is measured with open-loop load: the send times of a block are computed before it starts and every latency is taken from the intended send time, so a stalled system shows up as latency instead of as fewer sends (no coordinated omission). The generator records how late it issued each send (lag).",
    "- Percentiles come from HdrHistogram (1 µs resolution, 3 significant digits). Each arm runs in several blocks; the first part of every block (and optional warm-up blocks) is discarded; arms are interleaved and their order rotates every round. Tables give the median over blocks with the min–max range in parentheses.",
    "- A block is flagged saturated (⚠) when the generator lagged (p99 > 5 ms), the commit rate fell short of the offered rate, the delivery backlog grew during the block, events stayed undelivered, or sends failed. Saturated blocks are kept in the medians and marked.",
    "- CPU per event: this process's user + system time (`process.cpuUsage`) divided by events delivered; for servers, the whole process tree's time from `/proc/<pid>/stat`. The benchmark process also runs the producers and the load generator, so its figure is an upper bound for the SDK. `/proc` counts in clock ticks (10 ms), and at low rates fixed background work (timers, polls, other buses' relays) dominates: read CPU per event from the throughput scenario and high rates.",
    `- Postgres runs with test-infra's settings plus pg_stat_statements; ${m.postgresSettings.fsync === "on" ? "fsync and full_page_writes are on, as in production." : "**fsync is off** (test-infra's setting): a commit does not wait for a WAL flush, so commits are cheaper than on a production server and the commit-lock knee sits higher than it would there."}`,
    "",
  )
  const titles: Record<string, string> = {
    throughput: "1. Throughput and SDK overhead",
    latency: "2. Latency, commit → handler",
    knee: "3. The commit-lock knee",
    dbload: "4. Database load",
    fanout: "5. Fan-out",
    payload: "6. Payload size",
    recovery: "7. Recovery",
    natsFanout: "8. NATS: many subscribers of one channel",
    relay: "9. The relay: backlog, fairness, Postgres cost",
    relayScaling: "10. Relay scaling: 1, 2 and 3 relay processes",
  }
  for (const s of run.scenarios) {
    lines.push(`## ${titles[s.id] ?? s.title}`, "", method(s), "")
    if (s.error) lines.push(`**The scenario failed:** ${s.error}`, "")
    const render = renderers[s.id]
    if (render) lines.push(...render(s, charts), "")
    const missing = notMeasured(s.arms)
    if (missing.length > 0) lines.push("Not measured:", "", ...missing, "")
    if (s.notes.length > 0) lines.push(...s.notes.map((n) => `> ${n}`), "")
    lines.push(`<sub>scenario time ${(s.durationMs / 1000).toFixed(0)} s</sub>`, "")
  }
  if (run.warnings.length > 0) lines.push("## Warnings", "", ...run.warnings.map((w) => `- ${w}`), "")
  lines.push(
    "## Reproduce",
    "",
    "```sh",
    "pnpm install",
    "pnpm bench            # full run, about 20 minutes; writes this file, docs/benchmarks/*.svg and the JSON",
    "pnpm bench --quick    # under 3 minutes, marked as quick",
    "pnpm bench --scenario knee   # one scenario (throughput, latency, knee, dbload, fanout, payload, recovery, natsFanout, relay)",
    "```",
    "",
  )
  return { markdown: lines.join("\n"), svgs: charts.svgs }
}
