import { describe, expect, it } from "vitest"
import { memoryBroker } from "../src/adapter.js"
import { createBus, memoryOutbox } from "../src/index.js"

/**
 * Stopping a consumer lets the handler in flight finish and settle its event (within
 * `stopGraceMs`), so the next member does not run it again; a handler that does not finish
 * in time is interrupted and its event comes again.
 */
describe("stopping a consumer", () => {
  for (const transport of ["memory", "memory-broker"] as const) {
    it(`${transport}: a handler in flight finishes and is not run again by the next member`, async () => {
      const outbox = memoryOutbox()
      const broker = memoryOutbox()
      const make = () =>
        createBus({
          outbox,
          transport: { use: transport, broker: memoryBroker(broker) },
          env: false,
          relay: { maxIdleMs: 20 },
        })
      const started: Array<string> = []
      const finished: Array<string> = []
      let bus = await make()
      const consumer = bus.consume({ tenant: "acme", channel: "slow", group: "g" }, async (e) => {
        started.push(e.id)
        await new Promise((r) => setTimeout(r, 150))
        finished.push(e.id)
      })
      await outbox.transaction((tx) =>
        bus.publish(
          tx,
          [1, 2, 3].map((i) => ({ tenant: "acme", channel: "slow", type: "t", data: { i } })),
        ),
      )
      while (started.length === 0) await new Promise((r) => setTimeout(r, 5))
      await consumer.close()
      await bus.close()
      expect(finished).toEqual(started)
      bus = await make()
      const next = bus.consume({ tenant: "acme", channel: "slow", group: "g" }, async (e) => {
        started.push(e.id)
        finished.push(e.id)
      })
      while (finished.length < 3) await new Promise((r) => setTimeout(r, 5))
      await new Promise((r) => setTimeout(r, 100))
      await next.close()
      await bus.close()
      expect(started).toHaveLength(3)
      expect(new Set(started).size).toBe(3)
    })
  }

  it("interrupts a handler that does not finish within stopGraceMs", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    let calls = 0
    const consumer = bus.consume({ tenant: "acme", channel: "stuck", group: "g", stopGraceMs: 50 }, () => {
      calls++
      return new Promise<void>(() => {})
    })
    await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "stuck", type: "t" }))
    while (calls === 0) await new Promise((r) => setTimeout(r, 5))
    const t0 = Date.now()
    await consumer.close()
    expect(Date.now() - t0).toBeLessThan(1_000)
    await bus.close()
  })
})
