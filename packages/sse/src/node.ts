import type { IncomingMessage, ServerResponse } from "node:http"
import { admit, type HttpRefusal, type RequestInfo, type StreamPlan } from "./access.js"
import { type ResolvedSseOptions, resolveOptions, type SseOptions } from "./options.js"
import { type HeadFn, headOf, type SseSource, type SubscribeFn, subscribeOf } from "./source.js"
import { SseSession } from "./sseSession.js"
import { sseHeaders } from "./wire.js"

/**
 * Node `http` (and `http2` compatibility) entry point, and the pieces the Express and
 * Fastify helpers share with it. Node types are used for their shape only; nothing
 * here loads a framework.
 *
 * @module
 */

/** A Node request handler from {@link nodeSseHandler}. */
export type NodeSseHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>

/** What the helpers read from a Node request. `originalUrl` is Express's URL before mounting. */
export const nodeRequestInfo = (req: IncomingMessage & { readonly originalUrl?: string }): RequestInfo => {
  const header = req.headers["last-event-id"]
  return {
    // Only the query is read; the host is irrelevant and not trusted.
    url: new URL(req.originalUrl ?? req.url ?? "/", "http://localhost"),
    lastEventIdHeader: Array.isArray(header) ? header[0] : header,
  }
}

/** Writes a plain-text refusal (400, 401 or 403). */
export const writeRefusal = (res: ServerResponse, refusal: HttpRefusal): void => {
  res.writeHead(refusal.status, { ...refusal.headers, "Content-Type": "text/plain; charset=utf-8" })
  res.end(refusal.message)
}

/** Everything an adapter needs to stream, prepared once when the handler is built. */
export interface NodeStreamer<Req> {
  readonly options: ResolvedSseOptions<Req>
  readonly subscribe: SubscribeFn
  readonly head: HeadFn | undefined
}

/** Checks options (throws without `authorize`) and prepares a {@link NodeStreamer}. */
export const nodeStreamer = <Req>(source: SseSource, options: SseOptions<Req>): NodeStreamer<Req> => {
  const resolved = resolveOptions(options)
  return { options: resolved, subscribe: subscribeOf(source), head: headOf(source, resolved.head) }
}

/**
 * Streams `plan` on `res` until either side ends it; settles once the connection is gone
 * and every subscription, timer and listener is released. Never rejects.
 */
export const streamToNode = async <Req>(
  streamer: NodeStreamer<Req>,
  plan: StreamPlan,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> => {
  const session = new SseSession(plan, streamer.subscribe, streamer.head, streamer.options)
  await session.prepare()
  // The client may have left while the authorization hook ran or the start was resolved.
  if (res.destroyed || res.writableEnded) return
  const headers: Record<string, string> = { ...sseHeaders }
  // HTTP/2 forbids connection-specific headers; on HTTP/1.1 keep-alive stops proxies from closing early.
  if (req.httpVersionMajor < 2) headers.Connection = "keep-alive"
  res.writeHead(200, headers)
  const onDrain = () => session.drain()
  const onClose = () => void session.disconnected()
  // A socket error must not crash the process as an unhandled 'error' event; 'close' follows it.
  const onError = (error: unknown) => streamer.options.onError?.(error)
  res.on("drain", onDrain)
  res.once("close", onClose)
  res.on("error", onError)
  session.start({
    write: (chunk) => res.write(chunk),
    // No `res.cork()`: a response's write already corks its socket until the next tick, so
    // the frames of one flush leave in one system call; the response's own cork would
    // instead send each buffered chunk (and its chunk header) as a system call of its own.
    writeAll: (chunks) => {
      let ok = true
      for (const chunk of chunks) ok = res.write(chunk)
      return ok
    },
    end: () => res.end(),
    destroy: () => res.destroy(),
  })
  await session.done
  res.off("drain", onDrain)
  res.off("close", onClose)
  res.off("error", onError)
}

/**
 * A handler for `http.createServer` (or any router that passes Node's `req`/`res`).
 * Throws at once when `options.authorize` is missing. The returned promise settles when
 * the stream is over and never rejects: a failing authorization hook is answered with
 * 500 and reported to `options.onError`.
 *
 * @example
 * ```ts
 * import http from "node:http"
 * import type { Bus } from "@bus/core"
 * import { nodeSseHandler, type SseGrant } from "@bus/sse"
 *
 * declare const bus: Bus
 * declare const grantFor: (request: http.IncomingMessage) => Promise<SseGrant | false> // your auth
 *
 * const events = nodeSseHandler(bus, { authorize: (req) => grantFor(req) })
 * http.createServer((req, res) => (req.url?.startsWith("/events") ? events(req, res) : res.writeHead(404).end()))
 * ```
 */
export const nodeSseHandler = (source: SseSource, options: SseOptions<IncomingMessage>): NodeSseHandler => {
  const streamer = nodeStreamer(source, options)
  return async (req, res) => {
    let decision: HttpRefusal | StreamPlan
    try {
      decision = await admit(req, nodeRequestInfo(req), streamer.options)
    } catch (error) {
      streamer.options.onError?.(error)
      if (!res.headersSent) {
        res.writeHead(500, { "Content-Type": "text/plain; charset=utf-8" })
        res.end("internal error")
      }
      return
    }
    if (decision._tag === "Refusal") return writeRefusal(res, decision)
    return streamToNode(streamer, decision, req, res)
  }
}
