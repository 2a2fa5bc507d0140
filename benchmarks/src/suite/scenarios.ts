import type { ScenarioId } from "../cli.js"
import type { Scenario } from "../scenarios/context.js"
import { dbLoad } from "../scenarios/dbload/measure.js"
import { fanout } from "../scenarios/fanout/measure.js"
import { knee } from "../scenarios/knee/measure.js"
import { latency } from "../scenarios/latency/measure.js"
import { natsFanout } from "../scenarios/natsFanout/measure.js"
import { payload } from "../scenarios/payload/measure.js"
import { recovery } from "../scenarios/recovery/measure.js"
import { relay } from "../scenarios/relay/measure.js"
import { relayScaling } from "../scenarios/relayScaling/measure.js"
import { throughput } from "../scenarios/throughput/measure.js"

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
