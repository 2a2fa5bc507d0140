import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { nodeSseHandler } from "../src/index.js"
import { frames, listen, rawGet, serve, startBus, type TestBus, type TestServer, waitFor } from "./support.js"

const authorize = () => ({ tenant: "acme", channels: ["orders", "audit"] })

describe("a live stream", () => {
  let bus: TestBus
  let server: TestServer
  beforeAll(async () => {
    bus = await startBus()
    server = await serve(nodeSseHandler(bus.bus, { authorize, heartbeatMs: 30, retryMs: 1234 }))
  })
  afterAll(async () => {
    await server?.close()
    await bus?.close()
  })

  it("delivers events with the cursor as id and the envelope as data", async () => {
    const client = listen(`${server.url}/events?channel=orders`)
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      // The stream subscribes after the response starts; an id-only frame marks the start.
      for (let i = 0; i < 3; i++) await bus.publish("orders", i)
      await waitFor(() => client.messages.length === 3, "3 events")
      expect(client.indices()).toEqual([0, 1, 2])
      for (const m of client.messages) {
        expect(m.lastEventId).toBe(m.event.cursor)
        expect(m.event).toMatchObject({ tenant: "acme", channel: "orders", type: "test.event" })
        expect(typeof m.event.id).toBe("string")
      }
    } finally {
      client.close()
    }
  })

  it("sends the proxy headers, retry once, the start position and heartbeat comments", async () => {
    const raw = await rawGet(`${server.url}/events?channel=orders`)
    try {
      expect(raw.status).toBe(200)
      expect(raw.headers["content-type"]).toBe("text/event-stream; charset=utf-8")
      expect(raw.headers["cache-control"]).toBe("no-cache, no-transform")
      expect(raw.headers["x-accel-buffering"]).toBe("no")
      expect(raw.headers.connection).toBe("keep-alive")
      await waitFor(() => raw.text.split(": ping\n\n").length > 2, "two heartbeats")
      const all = frames(raw.text)
      expect(all[0]).toEqual(["retry: 1234"])
      // The start position: "now" resolved to the outbox head, so a reconnect before any event resumes.
      expect(all[1]).toHaveLength(1)
      expect(all[1]![0]).toMatch(/^id: mem2:/)
      expect(raw.text.match(/retry:/g)).toHaveLength(1)
    } finally {
      raw.close()
    }
  })

  it("keeps multi-line data inside one event", async () => {
    const raw = await rawGet(`${server.url}/events?channel=audit`)
    try {
      await waitFor(() => frames(raw.text).some((f) => f[0]?.startsWith("id:")), "start position")
      await bus.publish("audit", 1, { note: "line one\nline two" })
      await waitFor(() => raw.text.includes("data: "), "the event")
      const frame = frames(raw.text).find((f) => f.some((l) => l.startsWith("data: ")))!
      const data = frame.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6))
      expect(JSON.parse(data.join("\n")).data.note).toBe("line one\nline two")
      expect(frame.filter((l) => !l.startsWith("data: ") && !l.startsWith("id: "))).toEqual([])
    } finally {
      raw.close()
    }
  })
})
