/**
 * @bus/redis-streams/adapter — the Redis Streams transport as an Effect layer, its key and
 * cursor helpers and the low-level resend: for tools, tests and other adapters.
 * Applications use `redisStreams(…)` from `@bus/redis-streams`.
 *
 * @packageDocumentation
 */

export {
  type ChannelKeys,
  type CursorBinding,
  channelKeys,
  compareStreamIds,
  cursorPrefix,
  deadLetterIndexKey,
  defaultKeyPrefix,
  identityKey,
  legacyCursorPrefix,
  type ParsedCursor,
  parseCursor,
  type StreamId,
  toCursor,
  toHeadCursor,
} from "./names.js"
export { resendAfter } from "./recovery.js"
export { redisStreamsCapabilities, redisStreamsTransport } from "./transport.js"
