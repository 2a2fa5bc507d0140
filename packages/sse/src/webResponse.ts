import { admit, type HttpRefusal, type StreamPlan } from "./access.js"
import { type ResolvedSseOptions, resolveOptions, type SseOptions } from "./options.js"
import { type HeadFn, headOf, type SseSource, type SubscribeFn, subscribeOf } from "./source.js"
import { SseSession } from "./sseSession.js"
import { sseHeaders } from "./wire.js"

/**
 * The web-standard entry point: a `Request` in, a `Response` with a `ReadableStream`
 * body out. Runs wherever the Fetch API does: Hono, Next.js route handlers, Bun, Deno,
 * Cloudflare-style workers.
 *
 * @module
 */

/** A handler from {@link createSseHandler}. */
export type SseRequestHandler = (request: Request) => Promise<Response>

/**
 * How much the response body may hold before the session counts the client as behind
 * and starts using its own bounded buffer: about one socket buffer.
 */
const bodyHighWaterMark = 64 * 1024

/** A plain-text refusal (400, 401 or 403). */
const refusalResponse = (refusal: HttpRefusal): Response =>
  new Response(refusal.message, {
    status: refusal.status,
    headers: { ...refusal.headers, "Content-Type": "text/plain; charset=utf-8" },
  })

const streamResponse = async (
  plan: StreamPlan,
  request: Request,
  subscribe: SubscribeFn,
  head: HeadFn | undefined,
  options: ResolvedSseOptions<Request>,
): Promise<Response> => {
  const session = new SseSession(plan, subscribe, head, options)
  await session.prepare()
  const onAbort = () => void session.disconnected()
  const body = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        session.start({
          write: (chunk) => {
            controller.enqueue(chunk)
            return (controller.desiredSize ?? 0) > 0
          },
          // Once the body is closed no consumer will cancel it: this side's end is the disconnect.
          end: () => {
            try {
              controller.close()
            } catch {}
            void session.disconnected()
          },
          destroy: () => {
            try {
              controller.error(new Error("@bus/sse: client did not read the end of the stream in time"))
            } catch {}
            void session.disconnected()
          },
        })
      },
      pull: () => session.drain(),
      cancel: () => session.disconnected(),
    },
    { highWaterMark: bodyHighWaterMark, size: (chunk) => chunk.byteLength },
  )
  // Some runtimes signal a client that left only through the request's signal, not by cancelling the body.
  if (request.signal.aborted) onAbort()
  else {
    request.signal.addEventListener("abort", onAbort, { once: true })
    void session.done.then(() => request.signal.removeEventListener("abort", onAbort))
  }
  return new Response(body, { status: 200, headers: sseHeaders })
}

/**
 * Builds a handler that answers each request with an SSE `Response`. Options are checked
 * here, once: without `authorize` this throws, so the server fails at start instead of
 * serving an open endpoint.
 *
 * @example
 * ```ts
 * import type { Bus } from "@bus/core"
 * import { createSseHandler, type SseGrant } from "@bus/sse"
 * import { Hono } from "hono"
 *
 * declare const bus: Bus
 * declare const grantFor: (request: Request) => Promise<SseGrant | false> // your auth
 *
 * const events = createSseHandler(bus, { authorize: (req) => grantFor(req) })
 * const app = new Hono()
 * app.get("/events", (c) => events(c.req.raw))
 * ```
 */
export const createSseHandler = (source: SseSource, options: SseOptions<Request>): SseRequestHandler => {
  const resolved = resolveOptions(options)
  const subscribe = subscribeOf(source)
  const head = headOf(source, resolved.head)
  return async (request) => {
    const decision = await admit(
      request,
      { url: new URL(request.url), lastEventIdHeader: request.headers.get("last-event-id") ?? undefined },
      resolved,
    )
    if (decision._tag === "Refusal") return refusalResponse(decision)
    return streamResponse(decision, request, subscribe, head, resolved)
  }
}

/**
 * Answers one request with an SSE `Response` (or a 400/401/403 refusal). Throws at once
 * when `options.authorize` is missing; rejects when the authorization hook throws.
 * Prefer {@link createSseHandler} to check the options once at start.
 *
 * @example
 * ```ts
 * // app/events/route.ts (Next.js)
 * import type { Bus } from "@bus/core"
 * import { type Authorize, sseResponse } from "@bus/sse"
 *
 * declare const bus: Bus
 * declare const authorize: Authorize<Request> // your auth
 *
 * export const GET = (request: Request) => sseResponse(bus, request, { authorize })
 * ```
 */
export const sseResponse = (
  source: SseSource,
  request: Request,
  options: SseOptions<Request>,
): Promise<Response> => createSseHandler(source, options)(request)
