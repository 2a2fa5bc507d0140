import { fmtMs } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  cell,
  fmtBytes,
  fmtInt,
  fmtRatio,
  med,
  ok,
  type ScenarioReport,
  table,
} from "../../report/format.js"

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

/** Section 8 of docs/benchmarks.md: "NATS: many subscribers of one channel", rendered from this scenario's results. */
export const report: ScenarioReport = {
  title: "8. NATS: many subscribers of one channel",
  render: renderNatsFanout,
}
