import { fmtMs, fmtNum } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  cell,
  fmtInt,
  fmtRatio,
  med,
  ok,
  pipeName,
  type ScenarioReport,
  table,
} from "../../report/format.js"

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
export interface RelayDerived {
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

/** Section 9 of docs/benchmarks.md: "The relay: backlog, fairness, Postgres cost", rendered from this scenario's results. */
export const report: ScenarioReport = {
  title: "9. The relay: backlog, fairness, Postgres cost",
  render: renderRelay,
}
