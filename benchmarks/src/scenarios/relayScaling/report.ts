import { fmtMs } from "../../harness/progress.js"
import type { ScenarioResult } from "../../harness/types.js"
import {
  blocksCell,
  cell,
  fmtInt,
  fmtRatio,
  med,
  ok,
  type ScenarioReport,
  table,
} from "../../report/format.js"

/** Section 10: relay scaling (issue 16): forwarding rate with 1, 2, 3 relay processes. */
const renderRelayScaling = (s: ScenarioResult): string[] => {
  const arms = ok(s.arms)
  const one = (t: unknown) => arms.find((a) => a.params.pipe === t && Number(a.params.relays) === 1)
  return [
    table(
      [
        "broker",
        "relay processes",
        "forwarded/s",
        "÷ 1 process",
        "relay CPU per event",
        "Postgres CPU per event",
        "drain",
        "blocks",
      ],
      arms.map((a) => [
        String(a.params.pipe),
        String(a.params.relays),
        cell(a.metrics.forwardedPerSec, fmtInt),
        fmtRatio(med(a, "forwardedPerSec") / med(one(a.params.pipe), "forwardedPerSec")),
        cell(a.metrics.relayCpuUsPerEvent, (n) => `${fmtInt(n)} µs`),
        cell(a.metrics.pgUsPerEvent, (n) => `${fmtInt(n)} µs`),
        cell(a.metrics.drainMs, fmtMs),
        blocksCell(a),
      ]),
    ),
  ]
}

/** Section 10 of docs/benchmarks.md: "Relay scaling: 1, 2 and 3 relay processes", rendered from this scenario's results. */
export const report: ScenarioReport = {
  title: "10. Relay scaling: 1, 2 and 3 relay processes",
  render: renderRelayScaling,
}
