import { describe, expect, it } from "vitest"
import { EventStreamParser, memoryStorage, streamKey } from "../src/client/index.js"
import { controlFrame, eventFrame, positionFrame, retryFrame } from "../src/wire.js"

/** The browser client's event-stream parser against the frames this package writes, split at every byte. */
describe("EventStreamParser", () => {
  const stream =
    retryFrame(2000) +
    positionFrame("pg1:start") +
    ": ping\n\n" +
    eventFrame("pg1:1", JSON.stringify({ id: "1", text: "two\nlines" })) +
    controlFrame("overflow", { message: "behind" }) +
    controlFrame("reset", { reason: "expired", message: "gone" }, true) +
    "data: crlf\r\nid: x\r\n\r\ndata: cr\rid: y\r\r"

  const expected = [
    { event: "message", data: JSON.stringify({ id: "1", text: "two\nlines" }), lastEventId: "pg1:1" },
    { event: "overflow", data: JSON.stringify({ message: "behind" }), lastEventId: "pg1:1" },
    { event: "reset", data: JSON.stringify({ reason: "expired", message: "gone" }), lastEventId: "" },
    { event: "message", data: "crlf", lastEventId: "x" },
    { event: "message", data: "cr", lastEventId: "y" },
  ]

  it("reads every frame kind in one chunk", () => {
    const p = new EventStreamParser()
    expect(p.push(stream)).toEqual(expected)
    expect(p.retryMs).toBe(2000)
    expect(p.lastEventId).toBe("y")
  })

  it("gives the same events whatever the chunking, including CRLF split between chunks and multi-byte characters", () => {
    const bytes = new TextEncoder().encode(`${stream}data: é€😀\n\n`)
    for (const size of [1, 2, 3, 7]) {
      const p = new EventStreamParser()
      const got = []
      for (let i = 0; i < bytes.length; i += size) got.push(...p.push(bytes.subarray(i, i + size)))
      expect(got).toEqual([...expected, { event: "message", data: "é€😀", lastEventId: "y" }])
    }
  })

  it("keeps an id-only frame as the last event id without dispatching", () => {
    const p = new EventStreamParser("old")
    expect(p.push(positionFrame("pg1:9"))).toEqual([])
    expect(p.lastEventId).toBe("pg1:9")
  })
})

describe("resume ids", () => {
  it("are keyed per endpoint and channel set, whatever the channel order or query", () => {
    expect(streamKey("http://h/events?x=1", ["b", "a"])).toBe(streamKey("http://h/events", ["a", "b"]))
    expect(streamKey("http://h/events", ["a"])).not.toBe(streamKey("http://h/events", ["b"]))
    const s = memoryStorage()
    s.setItem("k", "v")
    expect(s.getItem("k")).toBe("v")
    s.removeItem("k")
    expect(s.getItem("k")).toBeNull()
  })
})
