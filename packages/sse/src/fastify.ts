import type { IncomingMessage, ServerResponse } from "node:http"
import { admit } from "./access.js"
import { nodeRequestInfo, nodeStreamer, streamToNode } from "./node.js"
import type { SseOptions } from "./options.js"
import type { SseSource } from "./source.js"

/**
 * Fastify helper, typed by shape so Fastify is not a dependency: the request and reply
 * only need what Fastify 4 and 5 provide.
 *
 * @module
 */

/** The part of a Fastify request the helper uses. */
export interface FastifyRequestLike {
  readonly raw: IncomingMessage
}

/** The part of a Fastify reply the helper uses. */
export interface FastifyReplyLike {
  readonly raw: ServerResponse
  code(statusCode: number): unknown
  header(key: string, value: string): unknown
  send(payload?: unknown): unknown
  hijack(): unknown
  getHeaders?(): Record<string, number | string | ReadonlyArray<string> | undefined>
}

/** A Fastify route handler. */
export type FastifySseHandler<Req extends FastifyRequestLike> = (
  request: Req,
  reply: FastifyReplyLike,
) => Promise<unknown>

/**
 * A Fastify route handler serving SSE. Throws at once when `options.authorize` is missing.
 * Refusals go through the reply (so hooks and plugins see them); a stream takes over the
 * raw response with `reply.hijack()`, carrying over headers that hooks set on the reply
 * (CORS). A throwing authorization hook rejects into Fastify's error handler.
 *
 * @example
 * ```ts
 * import type { Bus } from "@bus/core"
 * import { fastifySse, type SseGrant } from "@bus/sse"
 * import Fastify, { type FastifyRequest } from "fastify"
 *
 * declare const bus: Bus
 * declare const grantFor: (request: FastifyRequest) => Promise<SseGrant | false> // your auth
 *
 * const app = Fastify()
 * app.get("/events", fastifySse<FastifyRequest>(bus, { authorize: (req) => grantFor(req) }))
 * ```
 */
export const fastifySse = <Req extends FastifyRequestLike = FastifyRequestLike>(
  source: SseSource,
  options: SseOptions<Req>,
): FastifySseHandler<Req> => {
  const streamer = nodeStreamer(source, options)
  return async (request, reply) => {
    const decision = await admit(request, nodeRequestInfo(request.raw), streamer.options)
    if (decision._tag === "Refusal") {
      reply.code(decision.status)
      for (const [key, value] of Object.entries(decision.headers)) reply.header(key, value)
      reply.header("Content-Type", "text/plain; charset=utf-8")
      return reply.send(decision.message)
    }
    reply.hijack()
    for (const [key, value] of Object.entries(reply.getHeaders?.() ?? {})) {
      if (value !== undefined) reply.raw.setHeader(key, value as number | string | Array<string>)
    }
    // Not awaited: Fastify has handed the response over; the stream runs until either side ends it.
    void streamToNode(streamer, decision, request.raw, reply.raw)
  }
}
