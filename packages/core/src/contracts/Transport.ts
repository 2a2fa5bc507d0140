import { Context, type Effect, type Stream } from "effect"
import type { DeliveredEvent, Envelope } from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"
import type { TransportCapabilities } from "./Capabilities.js"
import type { StartPosition } from "./Cursor.js"
import type { Address, DeadLetter } from "./OutboxStore.js"

/**
 * The delivery contract every transport implements: live delivery with catch-up from a
 * cursor, group consumption with acks, and (for brokers) accepting events from the relay.
 *
 * @module
 */

/** A subscription request. `from` defaults to `"now"`. */
export interface SubscribeRequest extends Address {
  readonly from?: StartPosition
}

/** A consumer-group request. */
export interface GroupRequest extends Address {
  readonly group: string
  /** Upper bound on unacknowledged deliveries in flight to this consumer. */
  readonly maxInFlight: number
}

/** One delivery to a consumer group member. Exactly one of `ack` / `retry` / `deadLetter` should run. */
export interface Delivery {
  readonly event: DeliveredEvent
  /** 1 on first delivery; higher when the transport redelivers (after a crash or a retry). */
  readonly attempt: number
  /** The event is handled: never deliver it to this group again. */
  readonly ack: Effect.Effect<void, BusError>
  /** Deliver this event again after `delayMs`. */
  readonly retry: (delayMs: number) => Effect.Effect<void, BusError>
  /** Park the event in the transport's dead-letter destination and stop delivering it. */
  readonly deadLetter: (reason: string) => Effect.Effect<void, BusError>
  /** Tell the transport a slow handler is still working so it does not redeliver yet. */
  readonly inProgress: Effect.Effect<void, BusError>
}

/** The transport contract. */
export class Transport extends Context.Service<
  Transport,
  {
    readonly capabilities: TransportCapabilities
    /**
     * A cursor meaning "everything delivered so far" for the address. Subscribing from it
     * misses nothing published afterwards; `from: "now"` resolves through this.
     */
    readonly head: (address: Address) => Effect.Effect<string, BusError>
    /** Committed events of one address after `from`, then live, for as long as the stream is consumed. */
    readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
    /** Deliveries for one member of a consumer group; the stream ends when the consumer stops. */
    readonly group: (request: GroupRequest) => Stream.Stream<Delivery, BusError>
    /**
     * Accepts one committed event from the relay. Must be idempotent by `event.id`:
     * sending the same event twice stores it once (broker transports only).
     */
    readonly send: (event: Envelope) => Effect.Effect<void, BusError>
    /** Events consumer groups of this transport dead-lettered, newest first (relay dead letters live in the outbox). */
    readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<DeadLetter>, BusError>
  }
>()("@bus/core/Transport") {}
