import { type Broker, broker } from "@bus/core/adapter"
import type { RedisStreamsOptions } from "./options.js"
import { redisStreamsTransport } from "./transport.js"

/**
 * Redis Streams as the bus's broker, passed by name to `createBus`: one stream per tenant
 * channel, filled idempotently by the relay from the outbox, read by subscriptions from a
 * cursor and by consumer groups with claims and a dead-letter stream. The connection opens
 * only when the bus selects this broker.
 *
 * @example
 * ```ts
 * import { createBus } from "@bus/core"
 * import { postgresOutbox } from "@bus/postgres-notify"
 * import { redisStreams } from "@bus/redis-streams"
 *
 * const bus = await createBus({
 *   outbox: postgresOutbox({ connectionString: process.env.DATABASE_URL }),
 *   transport: { use: "redis-streams", broker: redisStreams({ url: "redis://127.0.0.1:6379" }) },
 * })
 * ```
 */
export const redisStreams = (options: RedisStreamsOptions = {}): Broker =>
  broker("redis-streams", redisStreamsTransport(options))
