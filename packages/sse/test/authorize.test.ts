import type { IncomingMessage } from "node:http"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  type AuthorizeResult,
  createSseHandler,
  expressSse,
  fastifySse,
  nodeSseHandler,
  sseResponse,
} from "../src/index.js"
import { serve, startBus, type TestBus, type TestServer, tracked, waitFor } from "./support.js"

/** Grants by the `Authorization` header: `Bearer acme` may read acme's orders and audit. */
const authorize = (req: IncomingMessage): AuthorizeResult => {
  const auth = req.headers.authorization
  if (auth === undefined) return { status: 401, headers: { "WWW-Authenticate": 'Bearer realm="events"' } }
  if (auth === "Bearer acme") return { tenant: "acme", channels: ["orders", "audit"] }
  if (auth === "Bearer throws") throw new Error("identity provider down")
  return false
}

describe("authorization", () => {
  let bus: TestBus
  let server: TestServer
  const errors: Array<unknown> = []
  let stats: ReturnType<typeof tracked>["stats"]
  beforeAll(async () => {
    bus = await startBus()
    const t = tracked(bus.bus)
    stats = t.stats
    server = await serve(nodeSseHandler(t.subscribe, { authorize, onError: (e) => errors.push(e) }))
  })
  afterAll(async () => {
    await server?.close()
    await bus?.close()
  })

  const get = (query: string, token?: string) =>
    fetch(`${server.url}/events${query}`, {
      headers: token === undefined ? {} : { Authorization: `Bearer ${token}` },
    })

  it("refuses to build any handler without an authorize hook", () => {
    // What a JavaScript caller (no type checking) might pass.
    const none = {} as never
    const message = /options\.authorize is required/
    expect(() => nodeSseHandler(bus.bus, none)).toThrow(message)
    expect(() => createSseHandler(bus.bus, none)).toThrow(message)
    expect(() => sseResponse(bus.bus, new Request("http://x/"), none)).toThrow(message)
    expect(() => expressSse(bus.bus, none)).toThrow(message)
    expect(() => fastifySse(bus.bus, none)).toThrow(message)
    expect(() => nodeSseHandler(bus.bus, undefined as never)).toThrow(message)
  })

  it("answers 401 with the hook's headers when unauthenticated", async () => {
    const res = await get("?channel=orders")
    expect(res.status).toBe(401)
    expect(res.headers.get("www-authenticate")).toBe('Bearer realm="events"')
    expect(await res.text()).toBe("authentication required")
  })

  it("answers 403 when the hook says false", async () => {
    const res = await get("?channel=orders", "someone-else")
    expect(res.status).toBe(403)
    await res.body?.cancel()
  })

  it("answers 403 for a tenant or channel outside the grant", async () => {
    const otherTenant = await get("?tenant=globex&channel=orders", "acme")
    expect(otherTenant.status).toBe(403)
    expect(await otherTenant.text()).toContain("globex")
    const otherChannel = await get("?channel=orders&channel=payroll", "acme")
    expect(otherChannel.status).toBe(403)
    expect(await otherChannel.text()).toContain("payroll")
  })

  it('never streams the wildcard tenant "*": asked for by the browser (403) or granted by the hook (400), nothing opens', async () => {
    const opened = stats.opened
    const asked = await get("?tenant=*&channel=orders", "acme")
    expect(asked.status).toBe(403)
    expect(await asked.text()).toContain('"*"')
    const encoded = await get("?tenant=%2A&channel=orders", "acme")
    expect(encoded.status).toBe(403)
    await encoded.body?.cancel()
    // A hook that grants "*" (meaning "every tenant") is refused as a name, not obeyed.
    const wide = await serve(
      nodeSseHandler(bus.bus, { authorize: () => ({ tenant: "*", channels: ["orders", "*"] }) }),
    )
    try {
      for (const query of ["?channel=orders", "?tenant=*&channel=orders", "?channel=*"]) {
        const res = await fetch(`${wide.url}/${query}`)
        expect(res.status, query).toBe(400)
        expect(await res.text(), query).toContain("only by consume")
      }
    } finally {
      await wide.close()
    }
    expect(stats.opened).toBe(opened)
  })

  it("answers 400 when there are too many channels", async () => {
    const handler = nodeSseHandler(bus.bus, {
      authorize: () => ({ tenant: "acme", channels: ["a", "b"] }),
      maxChannels: 1,
    })
    const small = await serve(handler)
    try {
      const res = await fetch(`${small.url}/?channel=a&channel=b`)
      expect(res.status).toBe(400)
      await res.body?.cancel()
    } finally {
      await small.close()
    }
  })

  it("answers 500 and reports the error when the hook throws", async () => {
    const res = await get("?channel=orders", "throws")
    expect(res.status).toBe(500)
    await res.body?.cancel()
    expect(errors.some((e) => (e as Error).message === "identity provider down")).toBe(true)
  })

  it("opens nothing for a refused request, and streams the granted channels by default", async () => {
    expect(stats.opened).toBe(0)
    const controller = new AbortController()
    const res = await fetch(`${server.url}/events`, {
      headers: { Authorization: "Bearer acme" },
      signal: controller.signal,
    })
    expect(res.status).toBe(200)
    await waitFor(() => stats.opened === 2, "both granted channels subscribed")
    expect(stats.requests.map((r) => r.channel)).toEqual(["orders", "audit"])
    controller.abort()
    await waitFor(() => stats.closed === 2, "both closed")
  })
})
