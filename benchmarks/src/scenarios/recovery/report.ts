import { fmtMs } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import { blocksCell, cell, fmtInt, ok, pipeName, type ScenarioReport, table } from "../../report/format.js"

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

/** Section 7 of docs/benchmarks.md: "Recovery", rendered from this scenario's results. */
export const report: ScenarioReport = { title: "7. Recovery", render: renderRecovery }
