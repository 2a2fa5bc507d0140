/**
 * @bus/sse — a bus subscription as Server-Sent Events, resumable by cursor.
 *
 * - {@link sseResponse} / {@link createSseHandler}: web-standard `Request` → `Response`
 *   (Hono, Next.js route handlers, Bun, Deno).
 * - {@link nodeSseHandler}: Node `http`; {@link fastifySse} and {@link expressSse} for
 *   those frameworks, typed by shape (neither is a dependency).
 *
 * Every stream: `id:` resumes (the cursor, or a composite of cursors for several
 * channels), `Last-Event-ID` resumes with no gap and no duplicate, an unusable cursor gets
 * an explicit `reset` event, a heartbeat comment keeps proxies open, a slow client is
 * disconnected after a bounded buffer, and an authorization hook is required.
 * See docs/sse.md.
 *
 * @packageDocumentation
 */

export { type ExpressSseHandler, expressSse } from "./express.js"
export {
  type FastifyReplyLike,
  type FastifyRequestLike,
  type FastifySseHandler,
  fastifySse,
} from "./fastify.js"
export { type NodeSseHandler, nodeSseHandler } from "./node.js"
export {
  type Authorize,
  type AuthorizeResult,
  defaultHeartbeatMs,
  defaultMaxBufferedBytes,
  defaultMaxBufferedEvents,
  defaultRetryMs,
  type SseGrant,
  type SseOptions,
  type SseRefusal,
} from "./options.js"
export type { HeadFn, SseSource, SseSubscription, SubscribeFn } from "./source.js"
export { compositePrefix, decodeSseId, encodeSseId, type SseIdError } from "./sseId.js"
export { createSseHandler, type SseRequestHandler, sseResponse } from "./webResponse.js"
export { controlEvents, sseHeaders } from "./wire.js"
