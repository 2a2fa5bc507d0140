import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  type Charts,
  cell,
  fmtRatio,
  med,
  ok,
  pipeName,
  type ScenarioReport,
  table,
} from "../../report/format.js"
import { lineChart, type Series } from "../../report/svg.js"

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

/** Section 2 of docs/benchmarks.md: "Latency, commit → handler", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "2. Latency, commit → handler", render: renderLatency }
