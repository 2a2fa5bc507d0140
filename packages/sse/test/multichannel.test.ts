import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { compositePrefix, decodeSseId, encodeSseId, nodeSseHandler } from "../src/index.js"
import { listen, type Received, serve, startBus, type TestBus, type TestServer, waitFor } from "./support.js"

const authorize = () => ({ tenant: "acme", channels: ["a", "b", "c"] })

/** `channel:i` of each received event, for order-insensitive-across-channels checks. */
const keys = (messages: ReadonlyArray<Received>) =>
  messages.map((m) => `${m.event.channel}:${(m.event.data as { i: number }).i}`)

const perChannel = (messages: ReadonlyArray<Received>, channel: string) =>
  messages.filter((m) => m.event.channel === channel).map((m) => (m.event.data as { i: number }).i)

const gate = () => {
  let open!: () => void
  const opened = new Promise<void>((resolve) => {
    open = resolve
  })
  return { hold: (attempt: number) => (attempt > 1 ? opened : Promise.resolve()), open }
}

describe("several channels on one connection", () => {
  let bus: TestBus
  let server: TestServer
  beforeAll(async () => {
    bus = await startBus()
    // The bus itself is the source here, so "now" is resolved through the bus's own outbox head.
    server = await serve(nodeSseHandler(bus.bus, { authorize, retryMs: 10 }))
  })
  afterAll(async () => {
    await server?.close()
    await bus?.close()
  })

  it("gives every event a composite id that resumes all channels", async () => {
    const g = gate()
    const client = listen(`${server.url}/events?channel=a&channel=b`, { gate: g.hold })
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      await bus.publish("a", 0)
      await bus.publish("b", 0)
      await bus.publish("a", 1)
      await waitFor(() => client.messages.length === 3, "3 events")
      const last = client.messages[2]!
      expect(last.lastEventId.startsWith(compositePrefix)).toBe(true)
      // Channels interleave in any order; the last id holds each channel's latest cursor.
      const latest = (channel: string) => client.messages.filter((m) => m.event.channel === channel).at(-1)!
      expect(decodeSseId(last.lastEventId, ["a", "b"])).toEqual(
        new Map([
          ["a", latest("a").event.cursor],
          ["b", latest("b").event.cursor],
        ]),
      )
      server.dropConnections()
      await waitFor(() => client.requests.length === 2, "the reconnect attempt")
      await bus.publish("b", 1)
      await bus.publish("a", 2)
      await bus.publish("b", 2)
      g.open()
      await waitFor(() => client.messages.length >= 6, "caught-up events")
      await bus.publish("a", 3)
      await waitFor(() => client.messages.length >= 7, "live event")
      expect(new Set(keys(client.messages)).size).toBe(7)
      expect(perChannel(client.messages, "a")).toEqual([0, 1, 2, 3])
      expect(perChannel(client.messages, "b")).toEqual([0, 1, 2])
    } finally {
      client.close()
    }
  })

  it("resumes a channel that had no event before the disconnect", async () => {
    const g = gate()
    const client = listen(`${server.url}/events?channel=a&channel=c`, { gate: g.hold })
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      await bus.publish("a", 100)
      await waitFor(() => client.messages.length === 1, "first event")
      // c has had no event, yet the id already holds c's start position.
      expect([
        ...(decodeSseId(client.messages[0]!.lastEventId, ["a", "c"]) as Map<string, string>).keys(),
      ]).toEqual(["a", "c"])
      server.dropConnections()
      await waitFor(() => client.requests.length === 2, "the reconnect attempt")
      await bus.publish("c", 0)
      g.open()
      await waitFor(() => client.messages.length === 2, "the quiet channel's event")
      expect(keys(client.messages)).toEqual(["a:100", "c:0"])
    } finally {
      client.close()
    }
  })

  it("reads one channel out of a composite id, and refuses a single cursor for several channels", async () => {
    const first = listen(`${server.url}/events?channel=a&channel=b`)
    await waitFor(() => first.source.readyState === first.source.OPEN, "open")
    await bus.publish("b", 50)
    await bus.publish("a", 50)
    await bus.publish("b", 51)
    await waitFor(() => first.messages.length === 3, "events")
    first.close()
    const onlyB = listen(`${server.url}/events?channel=b`, { lastEventId: first.messages[0]!.lastEventId })
    const single = listen(`${server.url}/events?channel=a&channel=b`, {
      lastEventId: first.messages[0]!.event.cursor,
    })
    try {
      await waitFor(() => onlyB.messages.length === 1, "b's later event")
      expect(keys(onlyB.messages)).toEqual(["b:51"])
      await waitFor(() => single.controls.length === 1, "reset")
      expect(single.controls[0]).toMatchObject({ type: "reset", data: { reason: "malformed" } })
    } finally {
      onlyB.close()
      single.close()
    }
  })
})

describe("the id encoding", () => {
  it("is the bare cursor on one channel and a composite on several", () => {
    expect(encodeSseId(new Map([["a", "pg1:5"]]), 1)).toBe("pg1:5")
    expect(encodeSseId(new Map(), 1)).toBeUndefined()
    const two = encodeSseId(new Map([["a", "pg1:5"]]), 2)!
    expect(two.startsWith(compositePrefix)).toBe(true)
    expect(decodeSseId(two, ["a", "b"])).toEqual(new Map([["a", "pg1:5"]]))
  })

  it("wraps a cursor that could not travel as an SSE id", () => {
    const id = encodeSseId(new Map([["a", "x\ny"]]), 1)!
    expect(id).toMatch(/^sse1\.[A-Za-z0-9_-]+$/)
    expect(decodeSseId(id, ["a"])).toEqual(new Map([["a", "x\ny"]]))
  })

  it("refuses composites that do not hold a channel map of cursors", () => {
    const bad = (json: string) => compositePrefix + Buffer.from(json).toString("base64url")
    for (const id of [bad("[1]"), bad('{"a":5}'), bad("nope"), `${compositePrefix}***`]) {
      expect(decodeSseId(id, ["a"])).toMatchObject({ reason: "malformed" })
    }
  })
})
