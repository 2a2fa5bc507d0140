import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  type Charts,
  cell,
  fmtInt,
  fmtRatio,
  med,
  ok,
  type ScenarioReport,
  table,
} from "../../report/format.js"
import { barChart } from "../../report/svg.js"

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

/** Section 1 of docs/benchmarks.md: "Throughput and SDK overhead", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "1. Throughput and SDK overhead", render: renderThroughput }
