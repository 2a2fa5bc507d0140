import type { ScenarioId } from "../cli.js"
import type { Scenario } from "./context.js"
import { dbLoad } from "./dbload/measure.js"
import { fanout } from "./fanout/measure.js"
import { knee } from "./knee/measure.js"
import { latency } from "./latency/measure.js"
import { natsFanout } from "./natsFanout/measure.js"
import { payload } from "./payload/measure.js"
import { recovery } from "./recovery/measure.js"
import { relay } from "./relay/measure.js"
import { relayScaling } from "./relayScaling/measure.js"
import { throughput } from "./throughput/measure.js"

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
