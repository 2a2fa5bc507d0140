/**
 * @bus/nats — the NATS JetStream transport of the @bus event bus: the relay forwards
 * committed outbox rows to a JetStream stream (`Nats-Msg-Id` = event id, so re-sends are
 * dropped), subscriptions read it with ordered consumers from a cursor, and consumer
 * groups share work through durable consumers with explicit acks.
 *
 * ```ts
 * import { createBus } from "@bus/core"
 * import { natsTransport } from "@bus/nats"
 * import { postgresNotify } from "@bus/postgres-notify"
 *
 * const pg = postgresNotify({ connectionString: process.env.DATABASE_URL })
 * const bus = await createBus({
 *   outbox: pg.outbox,
 *   transports: { nats: natsTransport({ servers: "nats://127.0.0.1:4222" }) },
 *   transport: "nats",
 * })
 * ```
 *
 * @packageDocumentation
 */

export { decodeCursor, encodeCursor } from "./cursor.js"
export type { DeadLetterRecord } from "./deadLetters.js"
export { natsTransport } from "./NatsTransport.js"
export {
  defaultDuplicateWindowMs,
  type NatsStreamOptions,
  type NatsTransportOptions,
} from "./options.js"
export {
  deadLetterStreamName,
  deadLetterSubjectOf,
  defaultStreamName,
  durableName,
  subjectOf,
} from "./subjects.js"
