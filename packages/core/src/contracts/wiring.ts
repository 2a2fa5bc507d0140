import type { Layer } from "effect"
import type { BrokerName, TransportChoice, TransportName } from "../model/config.js"
import type { BusError } from "../model/errors.js"
import type { OutboxCore, OutboxServices } from "./outboxStore.js"
import type { Transport } from "./transport.js"

/**
 * What `createBus` is wired with: one outbox (the source of truth, with the transport
 * that reads it directly) and, optionally, brokers by name. Adapter packages implement
 * these; users only call their constructors (`postgresOutbox(…)`, `memoryOutbox()`, `nats(…)`,
 * `redisStreams(…)`).
 *
 * @module
 */

/** The outbox and its own transport, as built for one bus. */
export interface OutboxLayers {
  /**
   * Every service the outbox implements, in one layer: at least its writer and reader
   * ({@link OutboxCore}); groups, dead letters, the relay log and retention when it has them
   * ({@link OutboxServices}). What it lacks, the bus does without: its transport declares no
   * consumer groups, and selecting a broker over it fails with `ConfigError`.
   */
  readonly outbox: Layer.Layer<OutboxCore, BusError>
  /** The transport that reads this outbox directly (used when the bus selects {@link Outbox.transport}). */
  readonly transport: Layer.Layer<Transport, BusError, OutboxCore>
}

/**
 * An outbox for `createBus({ outbox })`: `postgresOutbox(…)` from `@bus/postgres-notify`, or
 * `memoryOutbox()` from `@bus/core` for unit tests.
 */
export interface Outbox {
  /** Name of the transport that reads this outbox directly: what `"auto"` keeps below the threshold. */
  readonly transport: TransportName
  /**
   * Builds the layers for the transport the bus selected. The choice comes first because
   * the outbox serves it differently: the Postgres outbox sends NOTIFY per address only
   * when subscribers read it directly, and keeps unforwarded rows when a relay feeds a broker.
   */
  readonly layers: (choice: TransportChoice) => OutboxLayers
}

/** A broker transport by name, for `createBus({ transport: { broker } })`: `nats(…)`, `redisStreams(…)`. */
export interface Broker {
  readonly name: BrokerName
  /**
   * Built only when the bus selects this broker, so naming one costs nothing until the flip.
   * It is given a complete outbox (every service of {@link OutboxServices}): the relay feeds it.
   */
  readonly layer: Layer.Layer<Transport, BusError, OutboxServices>
}

/** Names a broker transport layer: how adapter packages define their broker constructor. */
export const broker = (
  name: BrokerName,
  layer: Layer.Layer<Transport, BusError, OutboxServices>,
): Broker => ({
  name,
  layer,
})
