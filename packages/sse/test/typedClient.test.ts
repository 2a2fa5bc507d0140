/**
 * Typed channels over SSE: the server takes typed channels (they stand for their names and
 * the stream carries events as stored), the client given the same channels types the
 * events, checks them on arrival and hands them on decoded; one that fails its schema is
 * reported and skipped, and the resume id moves past it.
 */
import { createBus, defineChannel, memoryOutbox } from "@bus/core"
import { Schema } from "effect"
import { describe, expect, expectTypeOf, it } from "vitest"
import { type BusEvent, followStream, memoryStorage } from "../src/client/index.js"
import { createSseHandler } from "../src/index.js"
import { waitFor } from "./support.js"

const orders = defineChannel("orders", {
  "order.paid": Schema.toStandardSchemaV1(
    Schema.Struct({ orderId: Schema.String, total: Schema.FiniteFromString }),
  ),
  "order.shipped": Schema.toStandardSchemaV1(
    Schema.Struct({ orderId: Schema.String, carrier: Schema.String }),
  ),
})

describe("a typed channel through @bus/sse", () => {
  it("the client types, checks and decodes events; a bad one is reported and skipped", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    const handler = createSseHandler(bus, {
      authorize: () => ({ tenant: "acme", channels: [orders] }),
      from: "beginning",
    })
    const received: Array<unknown> = []
    const invalid: Array<{ event: BusEvent; issues: number }> = []
    // The client reads the handler's Response directly: no socket needed for this test.
    const stream = followStream(
      {
        url: "http://app.test/events",
        channels: [orders],
        storage: memoryStorage(),
        fetch: async (input, init) => handler(new Request(input, init)),
      },
      {
        onEvent: (event) => {
          expectTypeOf(event.type).toEqualTypeOf<"order.paid" | "order.shipped">()
          if (event.type === "order.paid") {
            expectTypeOf(event.data.total).toEqualTypeOf<number>()
            received.push(["paid", event.data.total])
          } else {
            expectTypeOf(event.data.carrier).toEqualTypeOf<string>()
            received.push(["shipped", event.data.carrier])
          }
        },
        onInvalid: (event, issues) => invalid.push({ event, issues: issues.length }),
      },
    )
    try {
      let lastId = ""
      await outbox.transaction(async (tx) => {
        await bus.publish(tx, {
          tenant: "acme",
          channel: orders,
          type: "order.paid",
          data: { orderId: "a", total: "9.5" },
        })
        // Another producer wrote a bad payload by name: the server streams it as stored.
        await bus.publish(tx, {
          tenant: "acme",
          channel: "orders",
          type: "order.paid",
          data: { orderId: "b" },
        })
        const { ids } = await bus.publish(tx, {
          tenant: "acme",
          channel: orders,
          type: "order.shipped",
          data: { orderId: "c", carrier: "ups" },
        })
        lastId = ids[0]!
      })
      await waitFor(() => received.length === 2 && invalid.length === 1, "two events and one refusal")
      expect(received).toEqual([
        ["paid", 9.5],
        ["shipped", "ups"],
      ])
      expect(invalid[0]!.event.data).toEqual({ orderId: "b" })
      expect(invalid[0]!.issues).toBeGreaterThan(0)
      // The server sent the stored (input) form; the client decoded it. The resume id is
      // past the last event (a single-channel stream's id is its cursor).
      expect(stream.lastEventId).toBeDefined()
      const [last] = await (async () => {
        for await (const e of bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" }))
          if (e.id === lastId) return [e]
        return []
      })()
      expect(stream.lastEventId).toBe(last!.cursor)
    } finally {
      stream.close()
      await bus.close()
    }
  })

  it("untyped use keeps its type argument form", () => {
    type Orders = { "order.paid": { orderId: string } }
    const typecheckOnly = () =>
      followStream<Orders>(
        { url: "http://app.test/events", channels: ["orders"] },
        {
          onEvent: (e) => {
            expectTypeOf(e.data.orderId).toEqualTypeOf<string>()
          },
        },
      )
    const byName = () =>
      followStream(
        { url: "http://app.test/events", channels: ["orders"] },
        {
          onEvent: (e) => {
            expectTypeOf(e.data).toEqualTypeOf<unknown>()
          },
        },
      )
    expect([typecheckOnly, byName].every((f) => typeof f === "function")).toBe(true)
  })
})
