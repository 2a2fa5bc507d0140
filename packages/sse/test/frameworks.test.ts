import type { AddressInfo } from "node:net"
import { getRequestListener } from "@hono/node-server"
import express from "express"
import Fastify, { type FastifyRequest } from "fastify"
import { Hono } from "hono"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type AuthorizeResult, expressSse, fastifySse, sseResponse } from "../src/index.js"
import { listen, serve, startBus, type TestBus, tracked, waitFor } from "./support.js"

/** Everyone with `?token=ok` may read acme's orders. */
const grant = (token: string | undefined): AuthorizeResult =>
  token === "ok" ? { tenant: "acme", channels: ["orders"] } : token === undefined ? { status: 401 } : false

describe("framework helpers", () => {
  let bus: TestBus
  beforeAll(async () => {
    bus = await startBus()
  })
  afterAll(async () => {
    await bus?.close()
  })

  it("Fastify serves a stream, keeps hook headers, refuses through the reply", async () => {
    const { subscribe, stats } = tracked(bus.bus)
    const app = Fastify({ forceCloseConnections: true })
    app.addHook("onRequest", async (_request, reply) => {
      reply.header("Access-Control-Allow-Origin", "*")
    })
    app.get(
      "/events",
      fastifySse<FastifyRequest<{ Querystring: { token?: string } }>>(subscribe, {
        authorize: (request) => grant(request.query.token),
        head: headFrom(bus),
      }),
    )
    await app.listen({ port: 0, host: "127.0.0.1" })
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
    const client = listen(`${url}/events?token=ok&channel=orders`)
    try {
      const refused = await fetch(`${url}/events?token=no&channel=orders`)
      expect(refused.status).toBe(403)
      expect(refused.headers.get("access-control-allow-origin")).toBe("*")
      expect(await refused.text()).toBe("forbidden")
      expect((await fetch(`${url}/events?channel=orders`)).status).toBe(401)

      const head = await fetch(`${url}/events?token=ok&channel=orders`)
      expect(head.headers.get("content-type")).toBe("text/event-stream; charset=utf-8")
      expect(head.headers.get("access-control-allow-origin")).toBe("*")
      await head.body?.cancel()

      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      await bus.publish("orders", 1)
      await bus.publish("orders", 2)
      await waitFor(() => client.messages.length === 2, "events")
      expect(client.indices()).toEqual([1, 2])
      client.close()
      await waitFor(() => stats.closed === stats.opened, "every subscription closed")
    } finally {
      client.close()
      await app.close()
    }
  })

  it("Express serves a stream, keeps middleware headers, sends hook errors to next()", async () => {
    const { subscribe, stats } = tracked(bus.bus)
    const app = express()
    app.use((_req, res, next) => {
      res.setHeader("Access-Control-Allow-Origin", "*")
      next()
    })
    app.get(
      "/events",
      expressSse<express.Request>(subscribe, {
        authorize: (req) => {
          if (req.query.token === "boom") throw new Error("hook failed")
          return grant(typeof req.query.token === "string" ? req.query.token : undefined)
        },
        head: headFrom(bus),
      }),
    )
    const errors: Array<unknown> = []
    app.use((error: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      errors.push(error)
      res.status(500).send("handled by express")
    })
    const server = await serve((req, res) => app(req, res))
    const client = listen(`${server.url}/events?token=ok&channel=orders`)
    try {
      expect((await fetch(`${server.url}/events?token=no&channel=orders`)).status).toBe(403)
      const boom = await fetch(`${server.url}/events?token=boom&channel=orders`)
      expect(boom.status).toBe(500)
      expect(await boom.text()).toBe("handled by express")
      expect((errors[0] as Error).message).toBe("hook failed")
      const head = await fetch(`${server.url}/events?token=ok&channel=orders`)
      expect(head.headers.get("content-type")).toBe("text/event-stream; charset=utf-8")
      expect(head.headers.get("access-control-allow-origin")).toBe("*")
      await head.body?.cancel()

      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      await bus.publish("orders", 3)
      await waitFor(() => client.messages.length === 1, "event")
      expect(client.indices()).toEqual([3])
      client.close()
      await waitFor(() => stats.closed === stats.opened, "every subscription closed")
    } finally {
      client.close()
      await server.close()
    }
  })

  it("Hono (web Response) serves a stream, resumes, and tears down when the client leaves", async () => {
    const { subscribe, stats } = tracked(bus.bus)
    const app = new Hono()
    app.get("/events", (c) =>
      sseResponse(subscribe, c.req.raw, {
        authorize: () => grant(c.req.query("token")),
        head: headFrom(bus),
      }),
    )
    const server = await serve(getRequestListener(app.fetch))
    const client = listen(`${server.url}/events?token=ok&channel=orders`)
    try {
      await waitFor(() => client.source.readyState === client.source.OPEN, "open")
      await bus.publish("orders", 4)
      await bus.publish("orders", 5)
      await waitFor(() => client.messages.length === 2, "events")
      const resumed = listen(`${server.url}/events?token=ok&channel=orders`, {
        lastEventId: client.messages[0]!.lastEventId,
      })
      await waitFor(() => resumed.messages.length === 1, "resumed event")
      expect(resumed.indices()).toEqual([5])
      resumed.close()
      client.close()
      await waitFor(() => stats.opened === 2 && stats.closed === 2, "every subscription closed")
    } finally {
      client.close()
      await server.close()
    }
  })
})

/** The outbox head of the test bus (the sources here are plain functions, not the bus). */
const headFrom = (bus: TestBus) => (address: { tenant: string; channel: string }) =>
  bus.bus.runtime.runPromise(bus.outbox.store.head(address))
