import { describe, expect, it } from "vitest"
import { createBus, memoryOutbox } from "../src/index.js"

describe("memory bus", () => {
  it("delivers committed, drops rolled back", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    const sub = bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" })
    await outbox.transaction((tx) =>
      bus.publish(tx, { tenant: "acme", channel: "orders", type: "a", data: { n: 1 } }),
    )
    await expect(
      outbox.transaction(async (tx) => {
        await bus.publish(tx, { tenant: "acme", channel: "orders", type: "rolled", data: null })
        throw new Error("boom")
      }),
    ).rejects.toThrow("boom")
    await outbox.transaction((tx) =>
      bus.publish(tx, { tenant: "acme", channel: "orders", type: "b", data: { n: 2 } }),
    )
    const got: string[] = []
    for await (const e of sub) {
      got.push(e.type)
      if (got.length === 2) break
    }
    expect(got).toEqual(["a", "b"])
    const err = await bus.publish(outbox.begin(), { tenant: "a.b", channel: "x", type: "t" }).catch((e) => e)
    expect(err._tag).toBe("InvalidName")
    await bus.close()
  })
})
