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

const renderFanout = (s: ScenarioResult, charts: Charts): string[] => {
  const arms = ok(s.arms)
  const out = [
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
        "setup",
        "blocks",
      ],
      arms.map((a) => [
        pipeName(a),
        String(a.params.subscribers),
        String(a.params.rate),
        cell(a.metrics.deliveredPerSec, fmtInt),
        cell(a.metrics.p50, fmtMs),
        cell(a.metrics.p99, fmtMs),
        cell(a.metrics.max, fmtMs),
        cell(a.metrics.heapBytesPerSubscriber, fmtBytes),
        cell(a.metrics.setupMs, fmtMs),
        blocksCell(a),
      ]),
    ),
  ]
  const pipes = [...new Set(arms.map(pipeName))]
  const seriesFor = (metric: string): Series[] =>
    pipes.map((p) => ({
      name: p,
      points: arms
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

const renderers: Record<string, (s: ScenarioResult, charts: Charts) => string[]> = {
  throughput: renderThroughput,
  latency: renderLatency,
  knee: renderKnee,
  dbload: renderDbLoad,
  fanout: renderFanout,
  payload: renderPayload,
  recovery: (s) => renderRecovery(s),
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
  if (heads.length > 0) lines.push("## Headlines", "", ...heads, "")
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
    "pnpm bench --scenario knee   # one scenario (throughput, latency, knee, dbload, fanout, payload, recovery)",
    "```",
    "",
  )
  return { markdown: lines.join("\n"), svgs: charts.svgs }
}
