import { fmtMs } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  type Charts,
  cell,
  fmtInt,
  fmtRatio,
  med,
  ok,
  type ScenarioReport,
  table,
} from "../../report/format.js"
import { lineChart, type Series } from "../../report/svg.js"

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

/** Section 3 of docs/benchmarks.md: "The commit-lock knee", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "3. The commit-lock knee", render: renderKnee }
