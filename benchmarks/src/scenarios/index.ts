import type { ScenarioId } from "../cli.js"
import type { Scenario } from "./context.js"
import { dbLoad } from "./dbload.js"
import { fanout } from "./fanout.js"
import { knee } from "./knee.js"
import { latency } from "./latency.js"
import { natsFanout } from "./natsFanout.js"
import { payload } from "./payload.js"
import { recovery } from "./recovery.js"
import { relay } from "./relay.js"
import { relayScaling } from "./relayScaling.js"
import { throughput } from "./throughput.js"

export const scenarios: Record<ScenarioId, Scenario> = {
  throughput,
  latency,
  knee,
  dbload: dbLoad,
  fanout,
  payload,
  recovery,
  natsFanout,
  relay,
  relayScaling,
}
