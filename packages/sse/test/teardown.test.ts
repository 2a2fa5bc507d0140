import type { ServerResponse } from "node:http"
import { afterEach, describe, expect, it, vi } from "vitest"
import { nodeSseHandler } from "../src/index.js"
import { activeCount, listen, rawGet, serve, startBus, tracked, waitFor } from "./support.js"

const authorize = () => ({ tenant: "acme", channels: ["orders", "audit"] })

/** A heartbeat interval no other code in the process uses, to find our timer among all of them. */
const heartbeatMs = 43_210

describe("teardown", () => {
  afterEach(() => {
    vi.restoreAllMocks()
  })

  it("releases subscriptions, the heartbeat timer and listeners when the client goes away", async () => {
    const setSpy = vi.spyOn(globalThis, "setInterval")
    const clearSpy = vi.spyOn(globalThis, "clearInterval")
    const bus = await startBus()
    const { subscribe, stats } = tracked(bus.bus)
    const handler = nodeSseHandler(subscribe, { authorize, heartbeatMs })
    const finished: Array<{ res: ServerResponse; before: Record<string, number> }> = []
    const server = await serve(async (req, res) => {
      const before = count(res)
      await handler(req, res)
      finished.push({ res, before })
    })
    try {
      const baseline = activeCount("Timeout")
      const client = listen(`${server.url}/events?channel=orders&channel=audit`)
      await waitFor(() => stats.opened === 2, "both channels subscribed")
      await bus.publish("orders", 1)
      await waitFor(() => client.messages.length === 1, "an event")
      const heartbeats = setSpy.mock.results.filter((_, i) => setSpy.mock.calls[i]![1] === heartbeatMs)
      expect(heartbeats).toHaveLength(1)

      client.close()
      await waitFor(() => finished.length === 1, "the handler to finish")
      expect(stats.closed).toBe(2)
      expect(clearSpy).toHaveBeenCalledWith(heartbeats[0]!.value)
      const { res, before } = finished[0]!
      expect(count(res)).toEqual(before)
      await waitFor(() => activeCount("Timeout") <= baseline, "timers back to the baseline")
    } finally {
      await server.close()
      await bus.close()
    }
  })

  it("ends the stream and releases everything when the bus closes", async () => {
    const bus = await startBus()
    const { subscribe, stats } = tracked(bus.bus)
    const server = await serve(nodeSseHandler(subscribe, { authorize, heartbeatMs, closeGraceMs: 50 }))
    try {
      const raw = await rawGet(`${server.url}/events?channel=orders`)
      await waitFor(() => stats.opened === 1, "subscribed")
      await bus.close()
      // The subscription ends by itself; the stream ends so the client reconnects (to a live server).
      await waitFor(() => raw.ended, "the response to end")
      await waitFor(() => stats.closed === 1, "the subscription closed")
    } finally {
      await server.close()
      await bus.close()
    }
  })
})

/** Listeners the handler adds to a response while streaming. */
const count = (res: ServerResponse) => ({
  drain: res.listenerCount("drain"),
  close: res.listenerCount("close"),
  error: res.listenerCount("error"),
})
