import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  type Charts,
  cell,
  med,
  ok,
  pipeName,
  type ScenarioReport,
  table,
} from "../../report/format.js"
import { lineChart } from "../../report/svg.js"

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

/** Section 6 of docs/benchmarks.md: "Payload size", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "6. Payload size", render: renderPayload }
