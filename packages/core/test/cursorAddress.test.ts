import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { addressTag, checkCursorAddress, memoryBroker, splitCursor, withFrontier } from "../src/adapter.js"
import { type Bus, CursorInvalid, createBus, type MemoryOutbox, memoryOutbox } from "../src/index.js"

/**
 * Cursors from elsewhere (issue 13, item 4): every address of an outbox shares its
 * positions, so a cursor of one (tenant, channel) read for another would be a valid
 * position there and skip the events in between. Cursors name their address; one of
 * another address is refused (`CursorInvalid` reason "address") and nothing is skipped.
 */

const orders = { tenant: "acme", channel: "orders" }
const invoices = { tenant: "acme", channel: "invoices" }
const otherTenant = { tenant: "globex", channel: "orders" }

const until = async (condition: () => boolean, what: string, timeoutMs = 5_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

const publish = async (bus: Bus, outbox: MemoryOutbox, address: typeof orders, from: number, n: number) => {
  await outbox.transaction(async (tx) => {
    for (let i = from; i < from + n; i++) await bus.publish(tx, { ...address, type: "t", data: { i } })
  })
}

const take = async (bus: Bus, address: typeof orders, from: string, n: number) => {
  const sub = bus.subscribe({ ...address, from })
  const got: Array<number> = []
  let cursor: string | undefined
  for await (const e of sub) {
    got.push((e.data as { i: number }).i)
    cursor = e.cursor
    if (got.length === n) break
  }
  return { got, cursor: cursor! }
}

const refusal = async (bus: Bus, address: typeof orders, from: string) => {
  const sub = bus.subscribe({ ...address, from })
  const refused = await sub.ready.then(
    () => undefined,
    (x: unknown) => x,
  )
  const fromIterator = await (async () => {
    for await (const _ of sub) return "delivered"
    return "ended"
  })().catch((x: unknown) => x)
  return { refused, fromIterator }
}

describe("cursors name their address (outbox transport)", () => {
  it("a cursor of another channel or tenant is refused: ready rejects, the iterator throws, nothing is skipped", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    try {
      await publish(bus, outbox, invoices, 0, 3)
      await publish(bus, outbox, orders, 0, 5)
      // A cursor of orders, well ahead of every invoices event.
      const { cursor } = await take(bus, orders, "beginning", 5)
      expect(cursor).toMatch(new RegExp(`^mem2:${addressTag(orders)}:`))
      for (const address of [invoices, otherTenant]) {
        const { refused, fromIterator } = await refusal(bus, address, cursor)
        expect(refused).toBeInstanceOf(CursorInvalid)
        expect(refused).toMatchObject({ reason: "address" })
        expect(fromIterator).toBe(refused)
      }
      // The store refuses it directly too, and the head of one address is not another's cursor.
      const direct = await Effect.runPromise(Effect.flip(outbox.store.read(invoices, cursor, 10)))
      expect(direct).toMatchObject({ _tag: "CursorInvalid", reason: "address" })
      const head = await bus.head(orders)
      expect((await refusal(bus, invoices, head)).refused).toMatchObject({ reason: "address" })
      // Its own address resumes right after it; invoices from the beginning lose nothing.
      await publish(bus, outbox, orders, 5, 1)
      expect((await take(bus, orders, cursor, 1)).got).toEqual([5])
      expect((await take(bus, invoices, "beginning", 3)).got).toEqual([0, 1, 2])
    } finally {
      await bus.close()
    }
  })

  it("a cursor of the older format (mem1:, no address) is still accepted, unchecked", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    try {
      await publish(bus, outbox, orders, 0, 4)
      const legacy = `mem1:${outbox.epoch}:2`
      const sub = bus.subscribe({ ...orders, from: legacy })
      expect(await sub.ready).toBe(legacy)
      await sub.close()
      expect((await take(bus, orders, legacy, 2)).got).toEqual([2, 3])
    } finally {
      await bus.close()
    }
  })

  it("consumer groups of several addresses are unaffected: each handles its own events once", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    const handled = { orders: [] as Array<number>, invoices: [] as Array<number> }
    try {
      const a = bus.consume({ ...orders, group: "mailer" }, (e) => {
        handled.orders.push((e.data as { i: number }).i)
      })
      const b = bus.consume({ ...invoices, group: "mailer" }, (e) => {
        handled.invoices.push((e.data as { i: number }).i)
      })
      await publish(bus, outbox, orders, 0, 10)
      await publish(bus, outbox, invoices, 0, 7)
      await until(() => handled.orders.length === 10 && handled.invoices.length === 7, "both groups")
      await Promise.all([a.close(), b.close()])
      // Restarted members resume from their committed (addressed) positions: nothing again.
      const again: Array<number> = []
      const c = bus.consume({ ...orders, group: "mailer" }, (e) => {
        again.push((e.data as { i: number }).i)
      })
      await publish(bus, outbox, orders, 10, 2)
      await until(() => again.length === 2, "the restarted member")
      await c.close()
      expect(handled.orders).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      expect(handled.invoices).toEqual([0, 1, 2, 3, 4, 5, 6])
      expect(again).toEqual([10, 11])
    } finally {
      await bus.close()
    }
  })
})

describe("composite cursors across a flip name their address", () => {
  const start = (outbox: MemoryOutbox, broker: MemoryOutbox, transport: "memory" | "memory-broker") =>
    createBus({
      outbox,
      transport: { use: transport, broker: memoryBroker(broker) },
      env: false,
      relay: { maxIdleMs: 20 },
    })

  it("withFrontier tags the composite; splitCursor and checkCursorAddress read it; untagged ones pass unchecked", () => {
    const composite = withFrontier("nats1:7", "mem1:0badf00d:3", orders)
    expect(composite).toBe(`nats1:7~@${addressTag(orders)}:mem1:0badf00d:3`)
    expect(splitCursor(composite)).toEqual({
      base: "nats1:7",
      frontier: "mem1:0badf00d:3",
      address: addressTag(orders),
    })
    expect(checkCursorAddress(composite, orders)).toBeUndefined()
    expect(checkCursorAddress(composite, invoices)).toMatchObject({
      _tag: "CursorInvalid",
      reason: "address",
    })
    expect(checkCursorAddress("nats1:7~mem1:0badf00d:3", invoices)).toBeUndefined()
    expect(checkCursorAddress("mem1:0badf00d:3", invoices)).toBeUndefined()
    expect(checkCursorAddress(`mem2:${addressTag(orders)}:0badf00d:3`, invoices)).toMatchObject({
      reason: "address",
    })
  })

  it("a broker cursor of another channel is refused on the broker and back on the outbox; an outbox cursor of another channel on the broker", async () => {
    const outbox = memoryOutbox()
    const broker = memoryOutbox()
    let bus = await start(outbox, broker, "memory-broker")
    try {
      await publish(bus, outbox, invoices, 0, 3)
      await publish(bus, outbox, orders, 0, 4)
      const { cursor: brokerCursor } = await take(bus, orders, "beginning", 4)
      expect(splitCursor(brokerCursor).address).toBe(addressTag(orders))
      // On the broker: its own cursor of another channel, and an outbox cursor of another channel.
      expect((await refusal(bus, invoices, brokerCursor)).refused).toMatchObject({ reason: "address" })
      const outboxCursor = (await Effect.runPromise(outbox.store.read(orders, "beginning", 10))).next
      const { refused, fromIterator } = await refusal(bus, invoices, outboxCursor)
      expect(refused).toMatchObject({ reason: "address" })
      expect(fromIterator).toBe(refused)
      // Its own channel resumes from it as before.
      await publish(bus, outbox, orders, 4, 1)
      expect((await take(bus, orders, brokerCursor, 1)).got).toEqual([4])
      await bus.close()

      // Back on the outbox: the composite of orders is refused for invoices, resumes orders.
      bus = await start(outbox, broker, "memory")
      expect((await refusal(bus, invoices, brokerCursor)).refused).toMatchObject({ reason: "address" })
      const back = await take(bus, orders, brokerCursor, 1)
      expect(back.got).toEqual([4])
      expect((await take(bus, invoices, "beginning", 3)).got).toEqual([0, 1, 2])
    } finally {
      await bus.close()
    }
  })
})
