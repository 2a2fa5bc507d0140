import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { resolveOptions } from "../src/options.js"
import { SseSession, type SseSink } from "../src/sseSession.js"
import { startBus, type TestBus, waitFor } from "./support.js"

/** A sink that records each write (a `writeAll` is one write of several chunks). */
const recordingSink = () => {
  const writes: string[][] = []
  const decoder = new TextDecoder()
  const sink: SseSink = {
    write: (chunk) => {
      writes.push([decoder.decode(chunk)])
      return true
    },
    writeAll: (chunks) => {
      writes.push(chunks.map((c) => decoder.decode(c)))
      return true
    },
    end: () => undefined,
    destroy: () => undefined,
  }
  const events = () =>
    writes.flat().flatMap((frame) =>
      frame
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => (JSON.parse(line.slice(6)) as { data: { i: number } }).data.i),
    )
  return { sink, writes, events }
}

describe("flushing", () => {
  let bus: TestBus
  beforeAll(async () => {
    bus = await startBus()
  })
  afterAll(async () => {
    await bus?.close()
  })

  it("writes the frames delivered in one turn in one write, each once and in order", async () => {
    const options = resolveOptions({ authorize: () => false })
    const plan = { _tag: "Plan", tenant: "acme", channels: ["orders"], resume: new Map() } as const
    const session = new SseSession(
      plan,
      (o) => bus.bus.subscribe(o),
      (a) => bus.bus.head(a),
      options,
    )
    await session.prepare()
    const { sink, writes, events } = recordingSink()
    session.start(sink)
    try {
      // The opening frames (retry, position) leave together too.
      await waitFor(() => writes.length > 0, "opening frames")
      expect(writes).toHaveLength(1)
      expect(writes[0]!.join("")).toMatch(/^retry: \d+\n\nid: mem2:/)
      // Let the subscription start, then three events in one transaction: one page, one turn.
      await new Promise((resolve) => setTimeout(resolve, 100))
      await bus.outbox.transaction((tx) =>
        bus.bus.publish(
          tx,
          [1, 2, 3].map((i) => ({ tenant: "acme", channel: "orders", type: "test.event", data: { i } })),
        ),
      )
      await waitFor(() => events().length >= 3, "three events")
      expect(events()).toEqual([1, 2, 3])
      expect(writes).toHaveLength(2)
      expect(writes[1]).toHaveLength(3)
      await bus.publish("orders", 4)
      await waitFor(() => events().length >= 4, "a fourth event")
      await new Promise((resolve) => setTimeout(resolve, 50))
      expect(events()).toEqual([1, 2, 3, 4])
      expect(writes).toHaveLength(3)
    } finally {
      await session.disconnected()
    }
  })
})
