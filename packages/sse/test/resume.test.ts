import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { nodeSseHandler } from "../src/index.js"
import { listen, serve, startBus, type TestBus, type TestServer, tracked, waitFor } from "./support.js"

const authorize = () => ({ tenant: "acme", channels: ["orders", "other"] })

/** A gate that holds every request after the first until opened. */
const gate = () => {
  let open!: () => void
  const opened = new Promise<void>((resolve) => {
    open = resolve
  })
  return { hold: (attempt: number) => (attempt > 1 ? opened : Promise.resolve()), open }
}

describe("resuming by Last-Event-ID", () => {
  let bus: TestBus
  let server: TestServer
  let stats: ReturnType<typeof tracked>["stats"]
  beforeAll(async () => {
    bus = await startBus()
    const t = tracked(bus.bus)
    stats = t.stats
    server = await serve(nodeSseHandler(t.subscribe, { authorize, retryMs: 10, head: headOf(bus) }))
  })
  afterAll(async () => {
    await server?.close()
    await bus?.close()
  })

  it("resumes after a dropped connection with no gap and no duplicate", async () => {
    const g = gate()
    const client = listen(`${server.url}/events?channel=orders`, { gate: g.hold })
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      for (let i = 0; i < 3; i++) await bus.publish("orders", i)
      await waitFor(() => client.messages.length === 3, "first events")
      server.dropConnections()
      await waitFor(() => client.requests.length === 2, "the reconnect attempt")
      // Published while the client is away: the resume must catch these up.
      for (let i = 3; i < 6; i++) await bus.publish("orders", i)
      g.open()
      await waitFor(() => client.messages.length >= 6, "caught-up events")
      await bus.publish("orders", 6)
      await waitFor(() => client.messages.length >= 7, "live event after resume")
      expect(client.indices()).toEqual([0, 1, 2, 3, 4, 5, 6])
      expect(client.requests[1]!["Last-Event-ID"]).toBe(client.messages[2]!.event.cursor)
    } finally {
      client.close()
    }
  })

  it("resumes a stream that had no event yet from where it began", async () => {
    const g = gate()
    const client = listen(`${server.url}/events?channel=other`, { gate: g.hold })
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      server.dropConnections()
      await waitFor(() => client.requests.length === 2, "the reconnect attempt")
      await bus.publish("other", 0)
      g.open()
      await waitFor(() => client.messages.length === 1, "the event published while away")
      expect(client.indices()).toEqual([0])
      expect(client.requests[1]!["Last-Event-ID"]).toMatch(/^mem2:/)
    } finally {
      client.close()
    }
  })

  it("starts a new client after its Last-Event-ID header, or the lastEventId query parameter", async () => {
    const first = listen(`${server.url}/events?channel=orders`)
    await waitFor(() => first.source.readyState === first.source.OPEN, "open")
    for (let i = 10; i < 14; i++) await bus.publish("orders", i)
    await waitFor(() => first.messages.length === 4, "events")
    first.close()
    const after = first.messages[1]!.lastEventId
    const byHeader = listen(`${server.url}/events?channel=orders`, { lastEventId: after })
    const byQuery = listen(`${server.url}/events?channel=orders&lastEventId=${encodeURIComponent(after)}`)
    // The header wins over a stale query parameter (a browser reconnecting to the same URL).
    const both = listen(`${server.url}/events?channel=orders&lastEventId=${encodeURIComponent("stale")}`, {
      lastEventId: after,
    })
    try {
      for (const c of [byHeader, byQuery, both]) await waitFor(() => c.messages.length === 2, "catch-up")
      await bus.publish("orders", 14)
      for (const c of [byHeader, byQuery, both]) {
        await waitFor(() => c.messages.length === 3, "live")
        expect(c.indices()).toEqual([12, 13, 14])
        expect(c.controls).toEqual([])
      }
    } finally {
      for (const c of [byHeader, byQuery, both]) c.close()
    }
  })

  it.each([
    ["malformed", () => "garbage"],
    ["foreign", () => `mem1:${bus.outbox.epoch === "00000000" ? "11111111" : "00000000"}:1`],
    ["composite that is not one", () => "sse1.!!!"],
  ])("sends reset instead of skipping for a %s cursor", async (_, cursor) => {
    const closedBefore = stats.closed
    const client = listen(`${server.url}/events?channel=orders`, { lastEventId: cursor() })
    try {
      await waitFor(() => client.controls.length > 0, "the reset event")
      const reset = client.controls[0]!
      expect(reset.type).toBe("reset")
      expect(reset.data).toMatchObject({ reason: expect.stringMatching(/malformed|foreign/) })
      expect(typeof (reset.data as { message: unknown }).message).toBe("string")
      expect(client.messages).toEqual([])
      // The reset cleared the id, so the client's automatic reconnect starts fresh instead of looping.
      await waitFor(() => client.requests.length >= 2, "the reconnect after reset")
      expect(client.requests[1]!["Last-Event-ID"]).toBeUndefined()
      await waitFor(() => stats.closed > closedBefore, "the failed subscription closed")
    } finally {
      client.close()
    }
  })

  it("sends reset, not a skip, to a client resuming with another channel's Last-Event-ID", async () => {
    // An id of "orders", well ahead of the events of "other" published before it (a page
    // that stored one Last-Event-ID for two streams): resuming "other" from it would skip them.
    await bus.publish("other", 100)
    await bus.publish("other", 101)
    const first = listen(`${server.url}/events?channel=orders`)
    await waitFor(() => first.source.readyState === first.source.OPEN, "open")
    await bus.publish("orders", 30)
    await waitFor(() => first.messages.length === 1, "an orders event")
    first.close()
    const ordersId = first.messages[0]!.lastEventId
    const client = listen(`${server.url}/events?channel=other`, { lastEventId: ordersId })
    try {
      await waitFor(() => client.controls.length > 0, "the reset event")
      expect(client.controls[0]).toMatchObject({
        type: "reset",
        data: { reason: "address", channel: "other" },
      })
      expect(client.messages).toEqual([])
      // The reset cleared the id: the reconnect starts fresh and gets what comes next, once.
      await waitFor(() => client.requests.length >= 2, "the reconnect after reset")
      expect(client.requests[1]!["Last-Event-ID"]).toBeUndefined()
      await waitFor(() => client.source.readyState === client.source.OPEN, "reopened")
      await bus.publish("other", 102)
      await waitFor(() => client.messages.length === 1, "the event after the reset")
      expect(client.indices()).toEqual([102])
      expect(client.controls).toHaveLength(1)
      // Its own stream's id still resumes right after it.
      const own = listen(`${server.url}/events?channel=orders`, { lastEventId: ordersId })
      try {
        await bus.publish("orders", 31)
        await waitFor(() => own.messages.length === 1, "the next orders event")
        expect(own.indices()).toEqual([31])
        expect(own.controls).toEqual([])
      } finally {
        own.close()
      }
    } finally {
      client.close()
    }
  })

  it("sends reset with reason expired for a cursor older than retention", async () => {
    const first = listen(`${server.url}/events?channel=orders`)
    await waitFor(() => first.source.readyState === first.source.OPEN, "open")
    await bus.publish("orders", 20)
    await bus.publish("orders", 21)
    await waitFor(() => first.messages.length === 2, "events")
    first.close()
    await Effect.runPromise(bus.outbox.store.prune(0, { keepUnforwarded: false }))
    const client = listen(`${server.url}/events?channel=orders`, {
      lastEventId: first.messages[0]!.lastEventId,
    })
    try {
      await waitFor(() => client.controls.length > 0, "the reset event")
      expect(client.controls[0]).toMatchObject({
        type: "reset",
        data: { reason: "expired", channel: "orders" },
      })
      expect(client.messages).toEqual([])
    } finally {
      client.close()
    }
  })
})

/** The outbox head, as the default would find it for a bus (here the source is a plain function). */
describe("after the outbox epoch rotates (a restored backup)", () => {
  it("streams with no id get no reset, however often they connect; an old-epoch id gets exactly one", async () => {
    const bus = await startBus()
    const t = tracked(bus.bus)
    const server = await serve(nodeSseHandler(t.subscribe, { authorize, retryMs: 10, head: headOf(bus) }))
    const clients: Array<ReturnType<typeof listen>> = []
    try {
      // A stream open across the rotation, holding an old-epoch position.
      const across = listen(`${server.url}/events?channel=orders`)
      clients.push(across)
      await waitFor(() => across.source.readyState === across.source.OPEN, "open")
      await bus.publish("orders", 0)
      await waitFor(() => across.messages.length === 1, "the first event")
      const oldId = across.messages[0]!.lastEventId

      bus.outbox.rotateEpoch()

      // Fresh streams (no id), one after another, before and after the next commits.
      const fresh: Array<ReturnType<typeof listen>> = []
      for (let i = 1; i <= 3; i++) {
        const c = listen(`${server.url}/events?channel=orders`)
        clients.push(c)
        fresh.push(c)
        await waitFor(() => c.source.readyState === c.source.OPEN, "open")
        await bus.publish("orders", i)
        await waitFor(() => c.messages.length === 1, "an event after the rotation")
      }
      // A client resuming with an id of the old epoch.
      const resumed = listen(`${server.url}/events?channel=orders`, { lastEventId: oldId })
      clients.push(resumed)
      await waitFor(() => resumed.controls.length === 1, "the reset")
      await waitFor(() => resumed.requests.length >= 2, "the reconnect after reset")
      await waitFor(() => resumed.source.readyState === resumed.source.OPEN, "reopened")
      // The stream open across the rotation was told once, and reconnected without an id.
      await waitFor(() => across.controls.length === 1 && across.requests.length >= 2, "its reset")
      await waitFor(() => across.source.readyState === across.source.OPEN, "reopened")
      for (let i = 4; i <= 6; i++) await bus.publish("orders", i)
      await waitFor(
        () => [across, resumed, ...fresh].every((c) => c.indices().includes(6)),
        "events after the resets",
      )
      await new Promise((r) => setTimeout(r, 100))

      for (const c of fresh) expect(c.controls).toEqual([])
      expect(fresh[0]!.indices()).toEqual([1, 2, 3, 4, 5, 6])
      for (const c of [across, resumed]) {
        expect(c.controls).toHaveLength(1)
        expect(c.controls[0]).toMatchObject({ type: "reset", data: { reason: "foreign", channel: "orders" } })
        expect(c.requests[1]!["Last-Event-ID"]).toBeUndefined()
      }
      expect(resumed.requests).toHaveLength(2)
      expect(resumed.indices()).toEqual([4, 5, 6])
    } finally {
      for (const c of clients) c.close()
      await server.close()
      await bus.close()
    }
  })
})

const headOf = (bus: TestBus) => (address: { tenant: string; channel: string }) =>
  Effect.runPromise(bus.outbox.store.head(address))
