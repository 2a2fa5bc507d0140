import { Context, Effect, type Stream } from "effect"
import type { DeliveredEvent, Envelope } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"
import type { TransportCapabilities } from "./capabilities.js"
import type { StartPosition } from "./cursor.js"
import type { Address, DeadLetter } from "./outboxStore.js"

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

/** What the relay passes along with an event: where it sits in the outbox (see `RelayedEvent`). */
export interface SendMeta {
  readonly position?: string | undefined
  readonly frontier?: string | undefined
}

/** One event handed to {@link Transport}'s `sendAll`, with what the relay knows of its place in the outbox. */
export interface SendItem {
  readonly event: Envelope
  readonly meta?: SendMeta | undefined
}

/**
 * What `sendAll` did: the first `sent` items are stored on the broker. When `error` is set,
 * item `sent` failed with it and the items after it count as not sent (some of them may
 * have landed anyway: sending them again is harmless, the broker drops repeats by id).
 */
export interface SendOutcome {
  readonly sent: number
  readonly error?: BusError | undefined
}

/**
 * `sendAll` for a transport that can only send one event at a time: each event after the
 * previous one was stored, stopping at the first failure.
 */
export const sendEach =
  (send: (event: Envelope, meta?: SendMeta) => Effect.Effect<void, BusError>) =>
  (items: ReadonlyArray<SendItem>, onSent?: (sent: number) => void): Effect.Effect<SendOutcome> =>
    Effect.gen(function* () {
      for (let i = 0; i < items.length; i++) {
        const item = items[i]!
        const exit = yield* Effect.exit(send(item.event, item.meta))
        if (exit._tag === "Failure") {
          const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
          if (reason === undefined || reason._tag !== "Fail") return yield* Effect.failCause(exit.cause)
          return { sent: i, error: reason.error }
        }
        onSent?.(i + 1)
      }
      return { sent: items.length }
    }).pipe(Effect.orDie)

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
  /** The event's outbox position, when the transport carries it (brokers fed by the relay). */
  readonly position?: string | undefined
  /**
   * True when the transport itself skips events the group's inbox lists and its `ack` and
   * `deadLetter` record the event there (the outbox transports). Otherwise the consumer
   * loop does both around the handler.
   */
  readonly inbox?: boolean | undefined
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
    /**
     * Refuses a start position `subscribe` would refuse (a cursor of another outbox or
     * epoch, a pruned one: `CursorInvalid`), before any event is read, so `ready` can
     * reject. Optional: a transport without it reports a refused cursor from the stream.
     */
    readonly checkStart?: (address: Address, from: string) => Effect.Effect<void, BusError>
    /** Committed events of one address after `from`, then live, for as long as the stream is consumed. */
    readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
    /** Deliveries for one member of a consumer group; the stream ends when the consumer stops. */
    readonly group: (request: GroupRequest) => Stream.Stream<Delivery, BusError>
    /**
     * Accepts one committed event from the relay. Must be idempotent by `event.id`:
     * sending the same event twice stores it once (broker transports only). A broker that
     * stores `meta` with the event supports cursors across a transport flip (docs/flip.md).
     */
    readonly send: (event: Envelope, meta?: SendMeta) => Effect.Effect<void, BusError>
    /**
     * Accepts the relay's events of one address, in order, with `send`'s guarantees for each,
     * and says how many went through ({@link SendOutcome}): the items before the first
     * failure are on the broker, in this order. Brokers pipeline them (one round trip for the
     * lot rather than one per event); the relay forwards only through this method.
     * `onSent`, when given, hears the length of the stored prefix as it grows, so a relay
     * interrupted mid-run still knows which events are on the broker.
     */
    readonly sendAll: (
      items: ReadonlyArray<SendItem>,
      onSent?: (sent: number) => void,
    ) => Effect.Effect<SendOutcome>
    /** Events consumer groups of this transport dead-lettered, newest first (relay dead letters live in the outbox). */
    readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<DeadLetter>, BusError>
  }
>()("@bus/core/Transport") {}
