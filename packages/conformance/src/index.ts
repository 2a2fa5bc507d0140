/**
 * The @bus transport conformance suite (Watermill-style): one set of vitest tests that
 * every transport runs against itself, checking the invariants of the design brief. A
 * transport's own test file (in this repository or a third party's) calls
 * {@link runConformanceSuite} at the top level with a {@link ConformanceTarget}: how to
 * make a bus and a producer transaction, how to start and stop its servers, and which
 * faults it can inject.
 *
 * ```ts
 * import { createBus, memoryOutbox } from "@bus/core"
 * import { runConformanceSuite } from "@bus/conformance"
 *
 * const outbox = memoryOutbox()
 * runConformanceSuite({
 *   name: "memory",
 *   makeBus: () => createBus({ outbox, env: false }),
 *   transaction: (fn) => outbox.transaction(fn),
 * })
 * ```
 *
 * What a transport supports is read from the bus it makes (`bus.capabilities`, declared
 * by the transport): the tests of consumer groups or replay skip themselves on a bus
 * whose capabilities say it has none, and the large-payload test sizes its event to
 * `capabilities.maxPayloadBytes`. Fault scenarios run only for the hooks the target gives.
 *
 * Every test uses its own random tenant and channel, closes what it opens even when it
 * fails, and waits by polling for conditions rather than sleeping. The suite imports no
 * transport package and starts no server: only `@bus/core`, vitest and fast-check.
 *
 * @module
 */
import { afterAll, beforeAll, describe } from "vitest"
import { deliveryTests } from "./suites/delivery.js"
import { faultTests } from "./suites/faults.js"
import { groupTests } from "./suites/groups.js"
import { inputTests } from "./suites/inputs.js"
import { isolationTests } from "./suites/isolation.js"
import { loadTests } from "./suites/load.js"
import { resourceTests } from "./suites/resources.js"
import { type ConformanceTarget, resolveTarget } from "./target.js"

export type { FaultReport } from "./suites/faults.js"
export { eventOfSize, utf8String } from "./suites/inputs.js"
export { addressPairs, hostileNames, nearCollisionPairs } from "./suites/isolation.js"
export {
  type Address,
  activeResources,
  Collector,
  duplicateIds,
  orderViolations,
  resourceGrowth,
  Session,
  settle,
  Tally,
  uniqueAddress,
  uniqueName,
  waitFor,
  withSession,
} from "./support.js"
export type { ConformanceTarget, SuiteContext } from "./target.js"

/**
 * Registers the conformance tests for `target` (call it at the top level of a test
 * file). Groups: delivery (no loss, order, no uncommitted reads, out-of-order commits,
 * dedupe, resume), tenant isolation (property-based), bad input, large payloads, load
 * (fan-out, concurrent producers), consumer groups, resources, and the fault scenarios
 * whose hooks the target provides.
 */
export function runConformanceSuite(target: ConformanceTarget): void {
  const ctx = resolveTarget(target)
  // Explicit, so the suite does not depend on the calling package's vitest testTimeout.
  describe(`conformance: ${target.name}`, { timeout: 120_000 }, () => {
    beforeAll(async () => {
      await target.setup?.()
    }, 600_000)
    afterAll(async () => {
      await target.teardown?.()
    }, 600_000)
    deliveryTests(ctx)
    isolationTests(ctx)
    inputTests(ctx)
    groupTests(ctx)
    loadTests(ctx)
    resourceTests(ctx)
    faultTests(ctx)
  })
}
