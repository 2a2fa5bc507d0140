import type { ScenarioId } from "../cli.js"
import type { ScenarioReport } from "../report/format.js"
import { report as dbloadReport } from "./dbload/report.js"
import { report as fanoutReport } from "./fanout/report.js"
import { report as kneeReport } from "./knee/report.js"
import { report as latencyReport } from "./latency/report.js"
import { report as natsFanoutReport } from "./natsFanout/report.js"
import { report as payloadReport } from "./payload/report.js"
import { report as recoveryReport } from "./recovery/report.js"
import { report as relayReport } from "./relay/report.js"
import { report as relayScalingReport } from "./relayScaling/report.js"
import { report as throughputReport } from "./throughput/report.js"

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
