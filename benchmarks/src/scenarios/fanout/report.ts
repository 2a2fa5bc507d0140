import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  type Charts,
  cell,
  fmtBytes,
  fmtInt,
  fmtRatio,
  med,
  ok,
  pipeName,
  type ScenarioReport,
  table,
} from "../../report/format.js"
import { lineChart, type Series } from "../../report/svg.js"

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

/** Section 5 of docs/benchmarks.md: "Fan-out", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "5. Fan-out", render: renderFanout }
