import { connect, type Socket } from "node:net"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { nodeSseHandler } from "../src/index.js"
import { listen, serve, startBus, type TestBus, type TestServer, tracked, waitFor } from "./support.js"

const authorize = () => ({ tenant: "acme", channels: ["orders"] })

/** A client that sends a request and then never reads a byte. */
const stalledClient = (url: string): Promise<Socket> => {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      socket.write(
        `GET /events?channel=orders HTTP/1.1\r\nHost: ${hostname}\r\nAccept: text/event-stream\r\n\r\n`,
      )
      // Not reading fills the socket buffers, then the server's response buffer, then ours.
      socket.pause()
      resolve(socket)
    })
    socket.on("error", reject)
  })
}

describe("a slow client", () => {
  let bus: TestBus
  let server: TestServer
  let stats: ReturnType<typeof tracked>["stats"]
  const overflows: Array<unknown> = []
  beforeAll(async () => {
    bus = await startBus()
    const t = tracked(bus.bus)
    stats = t.stats
    server = await serve(
      nodeSseHandler(t.subscribe, {
        authorize,
        maxBufferedEvents: 20,
        closeGraceMs: 100,
        head: (address) => Effect.runPromise(bus.outbox.store.head(address)),
        onOverflow: (info) => overflows.push(info),
      }),
    )
  })
  afterAll(async () => {
    await server?.close()
    await bus?.close()
  })

  it("is disconnected after a bounded buffer while the fast clients keep receiving everything", async () => {
    const fast = [0, 1, 2].map(() => listen(`${server.url}/events?channel=orders`))
    const slow = await stalledClient(server.url)
    try {
      await waitFor(() => stats.opened === 4, "all four clients subscribed")
      const pad = "x".repeat(32 * 1024)
      let n = 0
      // Publish until the slow client overflows (bounded, in case it never does).
      while (overflows.length === 0 && n < 4000) {
        await bus.publish("orders", n++, { pad })
        // Let the sockets move data between publishes, as a real producer would.
        if (n % 8 === 0) await new Promise((resolve) => setImmediate(resolve))
      }
      expect(overflows).toEqual([{ tenant: "acme", channels: ["orders"] }])
      // Its subscription is released, and after the grace period its connection too.
      await waitFor(() => stats.closed === 1, "the slow client's subscription closed")
      await waitFor(() => connections(server) === 3, "the slow connection dropped")
      await bus.publish("orders", n++)
      for (const f of fast) {
        await waitFor(() => f.messages.length === n, `all ${n} events at every fast client`)
        expect(f.indices()).toEqual(Array.from({ length: n }, (_, i) => i))
        expect(f.controls).toEqual([])
      }
      // Every client got the same frames: the ids are the events' cursors.
      expect(fast[1]!.messages.map((m) => m.lastEventId)).toEqual(fast[0]!.messages.map((m) => m.lastEventId))
    } finally {
      for (const f of fast) f.close()
      slow.destroy()
    }
  })
})

let lastCount = -1
/** Open connections of the server, refreshed in the background (getConnections is async). */
const connections = (server: TestServer): number => {
  server.server.getConnections((_, count) => {
    lastCount = count
  })
  return lastCount
}
