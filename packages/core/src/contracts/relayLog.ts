import { Context, type Effect, type Stream } from "effect"
import type { Envelope } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"
import type { Address } from "./outboxReader.js"

/**
 * The relay's side of the outbox: what an outbox provides so that a relay can forward its
 * rows to a broker (NATS, Redis Streams). An outbox without it serves its own transport
 * only; a bus that selects a broker over it fails with `ConfigError`.
 *
 * @module
 */

/** A committed row as the relay reads it: the event and where it sits in the outbox. */
export interface RelayedEvent {
  readonly event: Envelope
  /**
   * The event's place in the outbox, in the store's own opaque form. A broker stores it with
   * the event, so that a subscriber resuming from an outbox cursor after a transport flip
   * skips exactly the events that cursor covers (`OutboxReader`'s `covers`).
   */
  readonly position: string
  /**
   * An outbox cursor that covers only events of this address that reach the broker at or
   * before this one (the relay sends each address's rows in read order). A broker appends it
   * to the cursor of this event (`~frontier`), so a subscriber flipped back to the outbox
   * resumes from it with no gap.
   */
  readonly frontier: string
}

/** One page of a relay read: rows in read order after a relay position. */
export interface RelayPage {
  readonly rows: ReadonlyArray<RelayedEvent>
  /** Position after this page; valid even when `rows` is empty. */
  readonly next: string
  /** True when the page was cut at `limit`: more rows follow at once. */
  readonly more: boolean
}

/**
 * What a relay stores for one partition, once per batch: `position` covers every row of the
 * partition that is on the broker (or parked), except that addresses in `ahead` have been
 * forwarded further, up to their own position (fairness: a quiet address is served past a
 * busy one's backlog). Positions are the store's opaque cursors.
 */
export interface RelayState {
  readonly position: string
  readonly ahead: Readonly<Record<string, string>>
  /**
   * True when no relay ever stored a state for this partition: nothing of it was forwarded
   * yet, so a broker found empty at start has lost nothing of it (the relay does not rewind
   * it). Set by the store on claim; ignored on commit.
   */
  readonly fresh?: boolean | undefined
}

/** A partition held by one relay: its stored state and the means to move it. */
export interface RelayClaim {
  readonly partition: number
  readonly state: RelayState
  /**
   * Stores a new state and renews the lease. `false` when the lease was lost to another
   * relay (this one stalled past its lease): the caller must stop relaying the partition.
   */
  readonly commit: (state: RelayState) => Effect.Effect<boolean, BusError>
  /** Renews the lease without moving the position; `false` when it was lost. */
  readonly renew: Effect.Effect<boolean, BusError>
}

/**
 * The relay's side of the outbox: a log read by position, never a queue of row states.
 * Addresses are spread over a fixed number of partitions; each partition is relayed by one
 * relay at a time (a lease it renews) from a position stored once per batch, so producers'
 * rows are never updated by the relay and several processes share the partitions.
 */
export interface RelayLog {
  /** Number of partitions (fixed per outbox). */
  readonly partitions: number
  /** The partition of an address (the same in every process that shares the store). */
  readonly partitionOf: (address: Address) => Effect.Effect<number, BusError>
  /**
   * Registers `owner` as a live relay for `leaseMs` and returns how many relays are live
   * (used to take a fair share of the partitions).
   */
  readonly heartbeat: (owner: string, leaseMs: number) => Effect.Effect<number, BusError>
  /** Takes partition `partition` for `owner` when it is free, already ours, or its lease ran out. */
  readonly claim: (
    partition: number,
    owner: string,
    leaseMs: number,
  ) => Effect.Effect<RelayClaim | undefined, BusError>
  /** Gives a partition up (its lease ends now), for a relay that holds more than its share or stops. */
  readonly release: (partition: number, owner: string) => Effect.Effect<void, BusError>
  /** Partitions held by live relays other than `owner`. */
  readonly heldByOthers: (owner: string) => Effect.Effect<ReadonlyArray<number>, BusError>
  /**
   * Committed rows after `after`, in read order, at most `limit`: of the whole partition, or of
   * one `address` of it. Snapshot-safe like subscriber reads (design invariant 3).
   */
  readonly read: (
    partition: number,
    after: string,
    limit: number,
    address?: Address,
  ) => Effect.Effect<RelayPage, BusError>
  /**
   * Addresses of the partition that may have rows `after` does not cover, in address order,
   * starting after `from`, at most `limit` (`complete` when the list reached the end). It
   * finds a quiet address behind a busy one's backlog without reading that backlog.
   */
  readonly pending: (
    partition: number,
    after: string,
    from: Address | undefined,
    limit: number,
  ) => Effect.Effect<{ readonly addresses: ReadonlyArray<Address>; readonly complete: boolean }, BusError>
  /** Rows no relay position covers yet, over all partitions (an upper bound). */
  readonly backlog: Effect.Effect<number, BusError>
  /**
   * Partitions that may have new rows: appended in this process (emitted at once, before the
   * transaction commits: the relay looks again shortly after), or `-1` for "any" (a wake-up
   * from another process). Coarse and possibly early; the relay's idle poll is the safety net.
   */
  readonly wakeups: Stream.Stream<number>
}

/**
 * The {@link RelayLog} of the outbox as a service: what `runRelay` reads. The relay also
 * needs `OutboxReader` (its `covers`) and `DeadLetterStore` (to park a poison event).
 *
 * @example
 * ```ts
 * import { OutboxRelay } from "@bus/core/adapter"
 *
 * // Rows no relay has forwarded yet: an operator's lag figure.
 * const backlog = OutboxRelay.use((log) => log.backlog)
 * ```
 */
export class OutboxRelay extends Context.Service<OutboxRelay, RelayLog>()("@bus/core/OutboxRelay") {}
