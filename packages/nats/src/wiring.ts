import { type Broker, broker } from "@bus/core/adapter"
import type { NatsTransportOptions } from "./options.js"
import { natsTransport } from "./transport.js"

/**
 * NATS JetStream as the bus's broker, passed by name to `createBus`: the relay forwards
 * committed outbox rows to a JetStream stream (`Nats-Msg-Id` = event id, so re-sends are
 * dropped); subscriptions and consumer groups read it. The connection opens only when the
 * bus selects this broker.
 *
 * @example
 * ```ts
 * import { createBus } from "@bus/core"
 * import { nats } from "@bus/nats"
 * import { postgresOutbox } from "@bus/postgres-notify"
 *
 * const bus = await createBus({
 *   outbox: postgresOutbox({ connectionString: process.env.DATABASE_URL }),
 *   transport: { use: "nats", broker: nats({ servers: "nats://127.0.0.1:4222" }) },
 * })
 * ```
 */
export const nats = (options: NatsTransportOptions = {}): Broker => broker("nats", natsTransport(options))
