import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import { blocksCell, type Charts, cell, med, ok, type ScenarioReport, table } from "../../report/format.js"
import { barChart } from "../../report/svg.js"

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

/** Section 4 of docs/benchmarks.md: "Database load", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "4. Database load", render: renderDbLoad }
