/**
 * @bus/redis-streams — Redis Streams as the broker of the @bus event bus: pass
 * `redisStreams({ url })` to `createBus({ transport: { broker } })`; `resendFromOutbox`
 * refills streams after Redis lost data. The transport layer, key and cursor helpers are in
 * `@bus/redis-streams/adapter`. See docs/redis.md.
 *
 * @packageDocumentation
 */

export type { RedisClusterOptions, RedisStreamsOptions } from "./options.js"
export { type ResendOptions, type ResendResult, resendFromOutbox } from "./recovery.js"
export { redisStreams } from "./wiring.js"
