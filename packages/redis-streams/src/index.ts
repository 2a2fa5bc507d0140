/**
 * @bus/redis-streams — the Redis Streams transport of the @bus event bus: one stream per
 * tenant channel (`bus:{tenant}:channel`), filled idempotently by the core relay from
 * the outbox, read by subscriptions from a cursor and by consumer groups with claims,
 * retries and a dead-letter stream. See docs/redis.md.
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
} from "./keys.js"
export type { RedisClusterOptions, RedisStreamsOptions } from "./options.js"
export { redisStreamsCapabilities, redisStreamsTransport } from "./RedisStreamsTransport.js"
export { type ResendOptions, type ResendResult, resendAfter, resendFromOutbox } from "./recovery.js"
