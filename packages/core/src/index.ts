/**
 * @bus/core — what an application uses: `createBus` wired with one outbox and, when it
 * outgrows Postgres NOTIFY, a broker by name; the in-memory outbox for unit tests; the
 * error family; and the same bus as an Effect Layer.
 *
 * ```ts
 * import { createBus } from "@bus/core"
 * import { nats } from "@bus/nats"
 * import { postgresOutbox } from "@bus/postgres-notify"
 *
 * const bus = await createBus({
 *   outbox: postgresOutbox({ connectionString: process.env.DATABASE_URL }),
 *   transport: { use: "auto", notifyRate: 300, broker: nats({ servers: process.env.NATS_URL }) },
 * })
 * ```
 *
 * Contracts, the relay, cursor helpers and test hooks for transport authors are in
 * `@bus/core/adapter`.
 *
 * @packageDocumentation
 */

export { type BusOptions, busLayer, type TransportOptions } from "./bus/busLayer.js"
export { Publisher } from "./bus/publisher.js"
export { Subscriber } from "./bus/subscriber.js"
export {
  type Bus,
  type ConsumeHandler,
  type ConsumeOptions,
  type Consumer,
  createBus,
  type Subscription,
} from "./facade/createBus.js"
export { type MemoryOutbox, memoryOutbox } from "./memory/store.js"
export { type Channel, type ChannelEvent, defineChannel } from "./model/channel.js"
export type { DeliveredEvent, EventInput } from "./model/envelope.js"
export {
  BusClosed,
  type BusError,
  ConfigError,
  CursorInvalid,
  InvalidEvent,
  InvalidName,
  isBusError,
  NotInTransaction,
  PayloadTooLarge,
  TransportFailure,
  TransportUnavailable,
} from "./model/errors.js"
