import type { ScenarioId } from "../cli.js"
import type { ScenarioReport } from "../report/format.js"
import { report as dbloadReport } from "../scenarios/dbload/report.js"
import { report as fanoutReport } from "../scenarios/fanout/report.js"
import { report as kneeReport } from "../scenarios/knee/report.js"
import { report as latencyReport } from "../scenarios/latency/report.js"
import { report as natsFanoutReport } from "../scenarios/natsFanout/report.js"
import { report as payloadReport } from "../scenarios/payload/report.js"
import { report as recoveryReport } from "../scenarios/recovery/report.js"
import { report as relayReport } from "../scenarios/relay/report.js"
import { report as relayScalingReport } from "../scenarios/relayScaling/report.js"
import { report as throughputReport } from "../scenarios/throughput/report.js"

/** Each scenario's report section (title and renderer), in its own folder beside its measurement. */
export const reports: Record<ScenarioId, ScenarioReport> = {
  throughput: throughputReport,
  latency: latencyReport,
  knee: kneeReport,
  dbload: dbloadReport,
  fanout: fanoutReport,
  payload: payloadReport,
  recovery: recoveryReport,
  natsFanout: natsFanoutReport,
  relay: relayReport,
  relayScaling: relayScalingReport,
}
