import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createSseHandler, sseResponse } from "../src/index.js"
import { frames, startBus, type TestBus, tracked, waitFor } from "./support.js"

const authorize = (request: Request) =>
  request.headers.get("authorization") === "ok"
    ? { tenant: "acme", channels: ["orders"] }
    : { status: 401 as const }

const request = (query = "?channel=orders", headers: Record<string, string> = { authorization: "ok" }) =>
  new Request(`http://app.test/events${query}`, { headers })

/** Reads a body as text until `until` holds for the text so far. */
const readUntil = async (
  reader: ReadableStreamDefaultReader<Uint8Array>,
  until: (text: string) => boolean,
  seen = { text: "" },
) => {
  const decoder = new TextDecoder()
  while (!until(seen.text)) {
    const { done, value } = await reader.read()
    if (done) break
    seen.text += decoder.decode(value, { stream: true })
  }
  return seen
}

describe("the web Response", () => {
  let bus: TestBus
  beforeAll(async () => {
    bus = await startBus()
  })
  afterAll(async () => {
    await bus?.close()
  })

  it("streams a bus, starting at the outbox head it finds through the bus itself", async () => {
    const handler = createSseHandler(bus.bus, { authorize })
    const response = await handler(request())
    expect(response.status).toBe(200)
    expect(Object.fromEntries(response.headers)).toEqual({
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      "x-accel-buffering": "no",
    })
    const reader = response.body!.getReader()
    const seen = await readUntil(reader, (t) => t.includes("id: mem1:"))
    await bus.publish("orders", 7)
    await readUntil(reader, (t) => t.includes("data: "), seen)
    const all = frames(seen.text)
    expect(all[0]).toEqual(["retry: 2000"])
    const start = all[1]![0]!.slice(4)
    const event = all[2]!
    expect(JSON.parse(event[1]!.slice(6))).toMatchObject({ channel: "orders", data: { i: 7 } })
    // The event's id is later than the start position the stream announced.
    expect(event[0]).not.toBe(`id: ${start}`)
    await reader.cancel()
  })

  it("refuses with a plain-text 401", async () => {
    const response = await sseResponse(bus.bus, request("?channel=orders", {}), { authorize })
    expect(response.status).toBe(401)
    expect(response.headers.get("content-type")).toBe("text/plain; charset=utf-8")
    expect(await response.text()).toBe("authentication required")
  })

  it("releases the subscription when the body is cancelled or the request aborted", async () => {
    const { subscribe, stats } = tracked(bus.bus)
    const handler = createSseHandler(subscribe, { authorize })
    const cancelled = await handler(request())
    await cancelled.body!.cancel()
    await waitFor(() => stats.closed === 1, "closed on cancel")
    const controller = new AbortController()
    const aborted = await handler(new Request(request(), { signal: controller.signal }))
    expect(aborted.status).toBe(200)
    controller.abort()
    await waitFor(() => stats.closed === 2, "closed on abort")
    expect(stats.opened).toBe(2)
  })

  it("disconnects a reader that stops reading, after an overflow event", async () => {
    const { subscribe, stats } = tracked(bus.bus)
    const overflows: Array<unknown> = []
    const response = await sseResponse(subscribe, request(), {
      authorize,
      maxBufferedEvents: 10,
      head: () => bus.bus.runtime.runPromise(bus.outbox.store.head({ tenant: "acme", channel: "orders" })),
      onOverflow: (info) => overflows.push(info),
    })
    const pad = "y".repeat(8 * 1024)
    let n = 0
    while (overflows.length === 0 && n < 500) {
      await bus.publish("orders", n++, { pad })
      // Let the subscription deliver between publishes, as it would between requests.
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(overflows).toHaveLength(1)
    // Body buffer (64 KiB) plus the bounded queue: well under what was published.
    expect(n).toBeLessThan(30)
    await waitFor(() => stats.closed === 1, "subscription closed")
    const { text } = await readUntil(response.body!.getReader(), () => false)
    const all = frames(text)
    expect(all.at(-1)![0]).toBe("event: overflow")
    const received = all.filter((f) => f.some((l) => l.startsWith('data: {"id"')))
    // What did reach the client is a prefix of the stream: it resumes from the last one by cursor.
    expect(received.length).toBeGreaterThan(0)
    expect(received.length).toBeLessThan(n)
  })
})
