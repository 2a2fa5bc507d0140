import { performance } from "node:perf_hooks"
import { describe, expect, it } from "vitest"
import {
  type Collector,
  event,
  orderViolations,
  payload,
  settle,
  Tally,
  txEvents,
  uniqueAddress,
  waitFor,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** A small deterministic generator (mulberry32), so transaction sizes are reproducible. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/** Fan-out and concurrent producers. */
export function loadTests(ctx: SuiteContext): void {
  const timeout = ctx.deliveryTimeoutMs

  describe("load", () => {
    it(
      "8. 100 subscribers on one channel all get every event, once, in order",
      async () =>
        withSession(ctx, async (s) => {
          const bus = await s.bus()
          const a = uniqueAddress()
          const replay = bus.capabilities.replay
          // Committed before anyone subscribes: a replaying transport delivers them too.
          const early = replay ? (await s.publish(bus, txEvents(a, "early", 10))).ids : []
          const subs: Array<Collector> = []
          for (let i = 0; i < 100; i++) subs.push(await s.live(bus, a))
          const ids = [...early]
          for (let t = 0; t < 4; t++) ids.push(...(await s.publish(bus, txEvents(a, `tx${t}`, 5))).ids)
          await waitFor(
            () => subs.every((c) => c.hasAll(ids)),
            Math.max(timeout, 30_000),
            () => `all subscribers (${subs.filter((c) => c.hasAll(ids)).length}/100 complete)`,
          )
          const sentinels = await settle(s, bus, subs)
          for (const [i, c] of subs.entries()) {
            const got = payload(c, sentinels)
            expect(c.duplicates, `subscriber ${i} duplicates`).toEqual([])
            expect(got.length, `subscriber ${i} count`).toBe(ids.length)
            expect(orderViolations(got), `subscriber ${i} order`).toEqual([])
            expect(c.error, `subscriber ${i} error`).toBeUndefined()
          }
        }),
      120_000,
    )

    it(
      "9. 8 concurrent producers × 1,000 events (transactions of 10-50) to a consumer group and a subscriber: 0 lost, 0 duplicates",
      async () =>
        withSession(ctx, async (s) => {
          const bus = await s.bus()
          const a = uniqueAddress()
          const groups = bus.capabilities.consumerGroups
          const handled = new Tally()
          if (groups) s.consume(bus, { ...a, group: "load" }, (e) => handled.add(e))
          const sub = await s.live(bus, a)

          const started = performance.now()
          const producers = Array.from({ length: 8 }, async (_, p) => {
            const next = random(p + 1)
            const ids: Array<string> = []
            for (let tx = 0, left = 1_000; left > 0; tx++) {
              const n = Math.min(left, 10 + Math.floor(next() * 41))
              const inputs = Array.from({ length: n }, (_, seq) =>
                event(a, "conformance.load", { tx: `p${p}-${tx}`, seq }),
              )
              ids.push(...(await s.publish(bus, inputs)).ids)
              left -= n
            }
            return ids
          })
          const ids = (await Promise.all(producers)).flat()
          const published = performance.now()
          expect(new Set(ids).size).toBe(8_000)

          await waitFor(
            () => sub.hasAll(ids) && (!groups || handled.hasAll(ids)),
            Math.max(timeout, 60_000),
            () => `every event (subscriber ${sub.distinct}/8000, handler ${handled.distinct}/8000)`,
          )
          const delivered = performance.now()
          const sentinels = await settle(s, bus, [sub])
          if (groups) await waitFor(() => handled.hasAll(sentinels), timeout, "the sentinel at the handler")

          const report = (name: string, tally: Tally) => {
            const got = tally.events.filter((e) => !sentinels.has(e.id))
            const lost = tally.missing(ids).length
            console.log(
              `conformance[${ctx.target.name}] load ${name}: sent=8000 delivered=${new Set(got.map((e) => e.id)).size} lost=${lost} duplicates=${tally.duplicates.length} publish=${Math.round(published - started)}ms deliver=${Math.round(delivered - started)}ms`,
            )
            expect(lost, `${name} lost`).toBe(0)
            expect(tally.duplicates, `${name} duplicates`).toEqual([])
            expect(got.length, `${name} deliveries`).toBe(8_000)
            expect(orderViolations(got), `${name} per-transaction order`).toEqual([])
          }
          report("subscriber", sub)
          if (groups) report("handler", handled)
        }),
      180_000,
    )
  })
}
