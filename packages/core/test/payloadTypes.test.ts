/**
 * The payload types a producer meets. The `@ts-expect-error` lines are the type-level half
 * of this test: `tsc` (the package's `typecheck`, part of `pnpm test`) fails if any of them
 * compiles, or if an accepted payload stops compiling. The run-time half shows that what the
 * type lets through deeper down is still refused by publish's validation.
 */
import { describe, expect, expectTypeOf, it } from "vitest"
import type { Json } from "../src/adapter.js"
import { createBus, type EventInput, memoryOutbox } from "../src/index.js"
import type { JsonInput } from "../src/model/envelope.js"

// The most common way TypeScript users type a payload: interfaces, which carry no index signature.
interface LineItem {
  sku: string
  quantity: number
}
interface Order {
  id: string
  total: number
  paid: boolean
  note?: string
  items: Array<LineItem>
  customer: { readonly name: string; readonly vip: boolean | null }
}
type OrderAlias = { readonly id: string; readonly total: number }

const order: Order = {
  id: "o-1",
  total: 42.5,
  paid: true,
  items: [{ sku: "tea", quantity: 2 }],
  customer: { name: "Ada", vip: null },
}

describe("publish's payload type", () => {
  it("accepts interface- and alias-typed objects, arrays of them and plain JSON", () => {
    const input = { tenant: "acme", channel: "orders", type: "order.paid" } as const
    const accepted: Array<EventInput> = [
      { ...input, data: order },
      { ...input, data: [order, order] },
      { ...input, data: { id: "o-2", total: 1 } satisfies OrderAlias },
      { ...input, data: { nested: { deeper: [1, "two", null, true] } } },
      { ...input, data: "text" },
      { ...input, data: 1 },
      { ...input, data: null },
      { ...input },
    ]
    expect(accepted).toHaveLength(8)
    // Everything a subscriber receives can be published again as is.
    expectTypeOf<Json>().toExtend<JsonInput>()
    expectTypeOf<Order>().toExtend<JsonInput>()
    expectTypeOf<ReadonlyArray<Order>>().toExtend<JsonInput>()
  })

  it("refuses what is cheaply told apart from JSON", () => {
    const input = { tenant: "acme", channel: "orders", type: "t" } as const
    const refused: Array<EventInput> = [
      // @ts-expect-error a function is not JSON
      { ...input, data: () => 1 },
      // @ts-expect-error a symbol is not JSON
      { ...input, data: Symbol("s") },
      // @ts-expect-error a bigint is not JSON
      { ...input, data: 1n },
      // @ts-expect-error a Date is not JSON (JSON.stringify would turn it into a string)
      { ...input, data: new Date() },
      // @ts-expect-error a Map is not JSON (JSON.stringify would write {})
      { ...input, data: new Map<string, number>() },
      // @ts-expect-error nor is a Set
      { ...input, data: new Set<number>() },
      // @ts-expect-error nor an array of functions
      { ...input, data: [() => 1] },
      // @ts-expect-error nor an array of bigints
      { ...input, data: [1n] },
    ]
    expect(refused).toHaveLength(8)
  })
})

describe("publish with interface payloads", () => {
  it("round-trips an interface-typed payload; non-JSON deeper down is still refused at run time", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    try {
      await outbox.transaction((tx) =>
        bus.publish(tx, { tenant: "acme", channel: "orders", type: "order.paid", data: order }),
      )
      // The type does not walk into properties: a Date inside an interface compiles, and
      // publish refuses it with a typed error that changes nothing.
      interface Stamped {
        id: string
        at: Date
      }
      const stamped: Stamped = { id: "s-1", at: new Date(0) }
      const error = await outbox
        .transaction((tx) =>
          bus.publish(tx, { tenant: "acme", channel: "orders", type: "stamped", data: stamped }),
        )
        .catch((e: unknown) => e)
      expect(error).toMatchObject({ _tag: "InvalidEvent", reason: "data" })
      const received: Array<unknown> = []
      for await (const event of bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" })) {
        received.push(event.data)
        break
      }
      expect(received).toEqual([order])
    } finally {
      await bus.close()
    }
  })
})
