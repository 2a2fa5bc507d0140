import { createBus, memoryOutbox } from "@bus/core"
import { runConformanceSuite } from "../src/index.js"

// One outbox for the whole run, as one database serves every process: each bus the
// suite makes is another "process" over it.
const outbox = memoryOutbox()

runConformanceSuite({
  name: "memory",
  makeBus: () =>
    createBus({
      outbox,
      env: false,
    }),
  transaction: (fn) => outbox.transaction(fn),
  // The in-memory transport has no server to break; this scenario checks the fault
  // harness itself (steady publishing, counting, reporting) with a fault that does nothing.
  extraFaults: { "no fault (harness self-check)": async () => {} },
})
