/**
 * Typed channels: one schema per event type through Standard Schema (Effect Schema via
 * `Schema.toStandardSchemaV1`, and zod), inferred by publish / subscribe / consume and
 * checked at the edge. The `@ts-expect-error` lines are the type-level half: `tsc` (the
 * package's `typecheck`) fails if one of them compiles.
 */
import { Effect, Schema, Stream } from "effect"
import { describe, expect, expectTypeOf, it } from "vitest"
import { z } from "zod"
import { type Json, memoryBroker } from "../src/adapter.js"
import {
  type Bus,
  type ChannelEvent,
  createBus,
  type DeliveredEvent,
  defineChannel,
  type InvalidEvent,
  type MemoryOutbox,
  memoryOutbox,
  Publisher,
  Subscriber,
} from "../src/index.js"
import { within } from "./support.js"

// Effect Schema: the encoded side (a string) is what is published and stored, the decoded
// side (a number) is what receivers get.
const OrderPaid = Schema.Struct({ orderId: Schema.String, total: Schema.FiniteFromString })
// zod: `carrier` defaults on receipt, so its input may omit it.
const OrderShipped = z.object({ orderId: z.string(), carrier: z.string().default("post") })
const orders = defineChannel("orders", {
  "order.paid": Schema.toStandardSchemaV1(OrderPaid),
  "order.shipped": OrderShipped,
})
const users = defineChannel("users", { "user.joined": z.object({ name: z.string().min(1) }) })

type Orders = typeof orders

const makeBus = async (transport: "memory" | "memory-broker" = "memory") => {
  const outbox = memoryOutbox()
  const bus = await createBus({
    outbox,
    transport: { use: transport, broker: memoryBroker(memoryOutbox()) },
    env: false,
    relay: { maxIdleMs: 20 },
  })
  return { outbox, bus }
}

const take = async <E>(iterable: AsyncIterable<E>, n: number): Promise<Array<E>> => {
  const out: Array<E> = []
  if (n === 0) return out
  for await (const e of iterable) {
    out.push(e)
    if (out.length >= n) break
  }
  return out
}

describe("typed channel types", () => {
  it("infer type and data, as a union discriminated by type", () => {
    type Event = ChannelEvent<Orders>
    expectTypeOf<Event["type"]>().toEqualTypeOf<"order.paid" | "order.shipped">()
    expectTypeOf<Extract<Event, { type: "order.paid" }>["data"]>().toEqualTypeOf<{
      readonly orderId: string
      readonly total: number
    }>()
    expectTypeOf<Extract<Event, { type: "order.shipped" }>["data"]>().toEqualTypeOf<{
      orderId: string
      carrier: string
    }>()
    expectTypeOf<Event["channel"]>().toEqualTypeOf<"orders">()
    expectTypeOf<Event["cursor"]>().toEqualTypeOf<string>()
    // A channel given by name stays untyped.
    expectTypeOf<ChannelEvent<string>>().toEqualTypeOf<DeliveredEvent>()
  })

  it("check publish, subscribe and consume at compile time (never run)", () => {
    const typecheckOnly = (bus: Bus, tx: unknown) => {
      // The schema's input form: a string total, an omitted defaulted carrier.
      void bus.publish(tx, {
        tenant: "acme",
        channel: orders,
        type: "order.paid",
        data: { orderId: "o", total: "4" },
      })
      void bus.publish(tx, { tenant: "acme", channel: orders, type: "order.shipped", data: { orderId: "o" } })
      void bus.publish(tx, [
        { tenant: "acme", channel: orders, type: "order.paid", data: { orderId: "o", total: "1" } },
        { tenant: "acme", channel: "audit", type: "anything", data: { free: true } },
      ])
      // Several typed channels in one call: name them.
      void bus.publish<Orders | typeof users>(tx, [
        { tenant: "acme", channel: orders, type: "order.paid", data: { orderId: "o", total: "1" } },
        { tenant: "acme", channel: users, type: "user.joined", data: { name: "ada" } },
      ])
      // @ts-expect-error total is the encoded (string) form on the wire
      void bus.publish(tx, {
        tenant: "acme",
        channel: orders,
        type: "order.paid",
        data: { orderId: "o", total: 4 },
      })
      // @ts-expect-error the channel declares no such type
      void bus.publish(tx, { tenant: "acme", channel: orders, type: "order.lost", data: { orderId: "o" } })
      // @ts-expect-error the data of another type of the channel
      void bus.publish(tx, { tenant: "acme", channel: orders, type: "order.shipped", data: { total: "1" } })
      // @ts-expect-error data is required on a typed channel
      void bus.publish(tx, { tenant: "acme", channel: orders, type: "order.paid" })

      const subscription = bus.subscribe({ tenant: "acme", channel: orders })
      expectTypeOf(subscription).toExtend<AsyncIterable<ChannelEvent<Orders>>>()
      const untyped = bus.subscribe({ tenant: "acme", channel: "orders" })
      expectTypeOf(untyped).toExtend<AsyncIterable<DeliveredEvent>>()

      bus.consume({ tenant: "acme", channel: orders, group: "g" }, (event, attempt, signal) => {
        expectTypeOf(attempt).toEqualTypeOf<number>()
        expectTypeOf(signal).toEqualTypeOf<AbortSignal>()
        if (event.type === "order.paid") expectTypeOf(event.data.total).toEqualTypeOf<number>()
        else expectTypeOf(event.data.carrier).toEqualTypeOf<string>()
      })
      bus.consume({ tenant: "acme", channel: "orders", group: "g" }, (event) => {
        expectTypeOf(event.data).toEqualTypeOf<Json>()
      })

      // The Effect services infer the same.
      return Effect.gen(function* () {
        const publisher = yield* Publisher
        yield* publisher.publish(tx, {
          tenant: "acme",
          channel: orders,
          type: "order.paid",
          data: { orderId: "o", total: "1" },
        })
        // @ts-expect-error wrong payload through the Effect API too
        yield* publisher.publish(tx, { tenant: "acme", channel: orders, type: "order.paid", data: {} })
        const subscriber = yield* Subscriber
        const stream = subscriber.subscribe({ tenant: "acme", channel: orders })
        expectTypeOf(stream).toEqualTypeOf<
          Stream.Stream<ChannelEvent<Orders>, import("../src/index.js").BusError>
        >()
        yield* subscriber.consume({ tenant: "acme", channel: orders, group: "g" }, (event) =>
          event.type === "order.paid" ? Effect.log(event.data.total.toFixed(2)) : Effect.void,
        )
      })
    }
    expect(typeof typecheckOnly).toBe("function")
  })

  it("defineChannel refuses a bad name and a non-schema at definition time", () => {
    expect(() => defineChannel("bad name!", {})).toThrow(expect.objectContaining({ _tag: "InvalidName" }))
    // @ts-expect-error not a Standard Schema
    expect(() => defineChannel("ok", { "x.y": { parse: () => 1 } })).toThrow(/not a Standard Schema/)
  })
})

describe("publishing on a typed channel", () => {
  it("stores the schema's input form; receivers get its output form (Effect Schema and zod)", async () => {
    const { outbox, bus } = await makeBus()
    try {
      await outbox.transaction((tx) =>
        bus.publish(tx, [
          { tenant: "acme", channel: orders, type: "order.paid", data: { orderId: "o-1", total: "12.5" } },
          { tenant: "acme", channel: orders, type: "order.shipped", data: { orderId: "o-1" } },
        ]),
      )
      const raw = await take(bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" }), 2)
      expect(raw.map((e) => e.data)).toEqual([{ orderId: "o-1", total: "12.5" }, { orderId: "o-1" }])
      const typed = await take(bus.subscribe({ tenant: "acme", channel: orders, from: "beginning" }), 2)
      expect(typed.map((e) => [e.type, e.data])).toEqual([
        ["order.paid", { orderId: "o-1", total: 12.5 }],
        ["order.shipped", { orderId: "o-1", carrier: "post" }],
      ])
      const first = typed[0]!
      if (first.type === "order.paid") expect(first.data.total + 1).toBe(13.5)
      expect(first.cursor).toBe(raw[0]!.cursor)
    } finally {
      await bus.close()
    }
  })

  it("a wrong payload is InvalidEvent (reason schema), writes nothing and leaves the transaction usable", async () => {
    const { outbox, bus } = await makeBus()
    try {
      const errors: Array<unknown> = []
      await outbox.transaction(async (tx) => {
        for (const bad of [
          { tenant: "acme", channel: orders, type: "order.paid", data: { orderId: "o-1", total: "lots" } },
          { tenant: "acme", channel: orders, type: "order.shipped", data: { orderId: 7 } },
          { tenant: "acme", channel: orders, type: "order.lost", data: {} },
        ]) {
          errors.push(await bus.publish(tx, bad as never).catch((e: unknown) => e))
        }
        // A batch with one bad event appends none of it.
        errors.push(
          await bus
            .publish(tx, [
              { tenant: "acme", channel: orders, type: "order.paid", data: { orderId: "ok", total: "1" } },
              { tenant: "acme", channel: users, type: "user.joined", data: { name: "" } },
            ] as never)
            .catch((e: unknown) => e),
        )
        // The same transaction goes on and commits.
        await bus.publish(tx, {
          tenant: "acme",
          channel: orders,
          type: "order.paid",
          data: { orderId: "good", total: "2" },
        })
      })
      expect(errors).toEqual([
        expect.objectContaining({
          _tag: "InvalidEvent",
          reason: "schema",
          message: expect.stringMatching(/data\.total/),
        }),
        expect.objectContaining({
          _tag: "InvalidEvent",
          reason: "schema",
          message: expect.stringMatching(/data\.orderId/),
        }),
        expect.objectContaining({
          _tag: "InvalidEvent",
          reason: "schema",
          message: expect.stringMatching(/declares no event type "order\.lost"/),
        }),
        expect.objectContaining({
          _tag: "InvalidEvent",
          reason: "schema",
          message: expect.stringMatching(/"users".*data\.name/),
        }),
      ])
      expect(outbox.committed()).toHaveLength(1)
      const [only] = await take(bus.subscribe({ tenant: "acme", channel: orders, from: "beginning" }), 1)
      expect(only!.data).toEqual({ orderId: "good", total: 2 })
    } finally {
      await bus.close()
    }
  })

  it("awaits an async schema before writing; its refusal writes nothing either", async () => {
    const taken = new Set(["ada"])
    const signups = defineChannel("signups", {
      "user.signed-up": z.object({ name: z.string() }).refine(async (u) => {
        await new Promise((r) => setTimeout(r, 5))
        return !taken.has(u.name)
      }, "name taken"),
    })
    const { outbox, bus } = await makeBus()
    try {
      const error = await outbox
        .transaction((tx) =>
          bus.publish(tx, {
            tenant: "acme",
            channel: signups,
            type: "user.signed-up",
            data: { name: "ada" },
          }),
        )
        .catch((e: unknown) => e)
      expect(error).toMatchObject({
        _tag: "InvalidEvent",
        reason: "schema",
        message: expect.stringMatching(/name taken/),
      })
      await outbox.transaction((tx) =>
        bus.publish(tx, { tenant: "acme", channel: signups, type: "user.signed-up", data: { name: "bob" } }),
      )
      expect(outbox.committed()).toHaveLength(1)
      // Receivers await it too.
      const [event] = await take(bus.subscribe({ tenant: "acme", channel: signups, from: "beginning" }), 1)
      expect(event!.data).toEqual({ name: "bob" })
    } finally {
      await bus.close()
    }
  })
})

/** Publishes, by name (untyped), one event that fails `orders`' schema between two that pass. */
const publishWithOneBad = (outbox: MemoryOutbox, bus: Bus) =>
  outbox.transaction((tx) =>
    bus.publish(tx, [
      { tenant: "acme", channel: "orders", type: "order.paid", data: { orderId: "a", total: "1" } },
      {
        tenant: "acme",
        channel: "orders",
        type: "order.paid",
        data: { orderId: "bad", total: "not a number" },
      },
      { tenant: "acme", channel: "orders", type: "order.refunded", data: { orderId: "unknown type" } },
      { tenant: "acme", channel: "orders", type: "order.shipped", data: { orderId: "c", carrier: "ups" } },
    ]),
  )

describe("receiving an event that fails its schema", () => {
  for (const transport of ["memory", "memory-broker"] as const) {
    it(`${transport}: subscribe skips it, tells onInvalid, and goes on`, async () => {
      const { outbox, bus } = await makeBus(transport)
      try {
        const invalid: Array<{ id: string; error: InvalidEvent }> = []
        const subscription = bus.subscribe({
          tenant: "acme",
          channel: orders,
          from: "beginning",
          onInvalid: (event, error) => invalid.push({ id: event.id, error }),
        })
        await publishWithOneBad(outbox, bus)
        const got = await within(take(subscription, 2), 5_000, "two valid events")
        expect(got.map((e) => e.data.orderId)).toEqual(["a", "c"])
        expect(invalid.map((i) => i.error.reason)).toEqual(["schema", "schema"])
        expect(invalid[0]!.error.message).toMatch(/data\.total/)
        expect(invalid[1]!.error.message).toMatch(/order\.refunded/)
      } finally {
        await bus.close()
      }
    })

    it(`${transport}: a throwing onInvalid ends the iterator with its error`, async () => {
      const { outbox, bus } = await makeBus(transport)
      try {
        const subscription = bus.subscribe({
          tenant: "acme",
          channel: orders,
          from: "beginning",
          onInvalid: (_event, error) => {
            throw error
          },
        })
        await publishWithOneBad(outbox, bus)
        const seen: Array<string> = []
        const error = await within(
          (async () => {
            for await (const e of subscription) seen.push(e.data.orderId)
          })().catch((e: unknown) => e),
          5_000,
          "the iterator's end",
        )
        expect(error).toMatchObject({ _tag: "InvalidEvent", reason: "schema" })
        // The page with the bad event is not yielded in part: the error comes first.
        expect(seen.length).toBeLessThanOrEqual(1)
      } finally {
        await bus.close()
      }
    })

    it(`${transport}: a consumer group dead-letters it with the schema's reason and handles the rest`, async () => {
      const { outbox, bus } = await makeBus(transport)
      try {
        const handled: Array<string> = []
        const consumer = bus.consume({ tenant: "acme", channel: orders, group: "billing" }, (event) => {
          handled.push(
            event.type === "order.paid" ? `paid ${event.data.total}` : `shipped ${event.data.carrier}`,
          )
        })
        await publishWithOneBad(outbox, bus)
        const deadline = Date.now() + 5_000
        let letters = await bus.deadLetters()
        while ((handled.length < 2 || letters.length < 2) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 10))
          letters = await bus.deadLetters()
        }
        await consumer.close()
        expect(handled).toEqual(["paid 1", "shipped ups"])
        expect(letters.map((l) => [l.event.data, l.source, l.attempts]).reverse()).toEqual([
          [{ orderId: "bad", total: "not a number" }, "billing", 1],
          [{ orderId: "unknown type" }, "billing", 1],
        ])
        expect(letters.every((l) => /does not match its schema|declares no event type/.test(l.reason))).toBe(
          true,
        )
      } finally {
        await bus.close()
      }
    })
  }

  it("Effect API: Subscriber.subscribe on a typed channel yields decoded events and skips bad ones", async () => {
    const { outbox, bus } = await makeBus()
    try {
      await publishWithOneBad(outbox, bus)
      const skipped: Array<string> = []
      const got = await bus.runtime.runPromise(
        Subscriber.use((s) =>
          s
            .subscribe({
              tenant: "acme",
              channel: orders,
              from: "beginning",
              onInvalid: (event) => skipped.push(event.id),
            })
            .pipe(Stream.take(2), Stream.runCollect),
        ),
      )
      expect(Array.from(got).map((e) => (e.type === "order.paid" ? e.data.total : e.data.carrier))).toEqual([
        1,
        "ups",
      ])
      expect(skipped).toHaveLength(2)
    } finally {
      await bus.close()
    }
  })
})
