import { describe, expect, it } from "vitest"
import {
  activeResources,
  event,
  quietResources,
  ResourceTracker,
  rejectionOf,
  resourceGrowth,
  Tally,
  tagOf,
  txEvents,
  uniqueAddress,
  uniqueName,
  waitFor,
  within,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** Invariant 8: after close() no timer, socket, listener or fiber is left. Runs alone (not concurrent). */
export function resourceTests(ctx: SuiteContext): void {
  const { target } = ctx
  const timeout = ctx.deliveryTimeoutMs

  describe("resources", () => {
    it("11. bus.close() ends every subscription and consumer and leaves no handle or timer behind", async () =>
      withSession(ctx, async (s) => {
        // Warm up what the target itself keeps for the whole run (its own pool, servers):
        // one transaction and one bus opened and closed, so they are in the baseline.
        await target.transaction(async () => undefined)
        const warm = await target.makeBus()
        await warm.close()
        const baseline = await quietResources()
        const tracker = new ResourceTracker().start()
        s.defer(async () => tracker.stop())

        const bus = await target.makeBus()
        s.defer(() => bus.close())
        const a = uniqueAddress()
        const groups = bus.capabilities.consumerGroups
        const sub = await s.live(bus, a)
        const early = s.subscribe(bus, a, bus.capabilities.replay ? "beginning" : "now")
        const handled = new Tally()
        const failing: Array<number> = []
        let stuck = 0
        const consumers = groups
          ? [
              bus.consume({ ...a, group: uniqueName("g") }, (e) => handled.add(e)),
              // Keeps a long retry timer pending when the bus closes.
              bus.consume(
                { ...a, group: uniqueName("g"), maxAttempts: 100, initialBackoffMs: 60_000 },
                (_e, n) => {
                  failing.push(n)
                  throw new Error("always fails")
                },
              ),
              // A handler still running (it never settles) when the bus closes.
              bus.consume({ ...a, group: uniqueName("g") }, () => {
                stuck++
                return new Promise<void>(() => {})
              }),
            ]
          : []
        const settled = consumers.map(() => false)
        const doneResults = consumers.map((c, i) =>
          c.done.then(
            () => {
              settled[i] = true
              return undefined
            },
            (error: unknown) => {
              settled[i] = true
              return error
            },
          ),
        )
        const ids = (await s.publish(bus, txEvents(a, "tx", 5))).ids
        await waitFor(
          () => sub.hasAll(ids) && (!groups || (handled.hasAll(ids) && failing.length >= 1 && stuck >= 1)),
          timeout,
          "deliveries before closing",
        )

        // A subscription closed on its own ends at once.
        await early.close()
        expect(early.ended).toBe(true)

        await within(bus.close(), ctx.closeTimeoutMs, "bus.close()")
        await waitFor(() => sub.ended, timeout, "the open subscription to end after bus.close()")
        expect(sub.error, "a subscription ended by close() ends cleanly").toBeUndefined()
        await waitFor(
          () => settled.every(Boolean),
          timeout,
          "every consumer's done to settle after bus.close()",
        )
        for (const result of await Promise.all(doneResults)) {
          expect(result, "consumer.done resolves after close()").toBeUndefined()
        }
        expect(failing, "the pending retry never ran").toEqual(groups ? [1] : [])
        expect(stuck, "the stuck handler was not called again").toBe(groups ? 1 : 0)

        // The closed bus refuses work with a typed error, and closing again is harmless.
        expect(
          tagOf(await rejectionOf(() => target.transaction((tx) => bus.publish(tx, event(a, "late"))))),
        ).toBe("BusClosed")
        expect(tagOf(await rejectionOf(() => bus.subscribe({ ...a, from: "now" })))).toBe("BusClosed")
        if (groups)
          expect(tagOf(await rejectionOf(() => bus.consume({ ...a, group: "g" }, () => {})))).toBe(
            "BusClosed",
          )
        await bus.close()

        let growth: Array<string> = []
        await waitFor(
          () => {
            growth = resourceGrowth(baseline, activeResources())
            return growth.length === 0
          },
          5_000,
          () =>
            `handles to be released after close() (more than before createBus: ${growth.join(", ")}); created since and still alive:\n${tracker.alive().join("\n---\n")}`,
        )
      }))
  })
}
