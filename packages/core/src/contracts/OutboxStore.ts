import { Context, type Effect, type Scope, type Stream } from "effect"
import type { DeliveredEvent, Envelope } from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"

/**
 * The outbox: the source of truth for every transport. Producers append inside their
 * own transaction; readers see only committed events, in an order that is safe against
 * out-of-order commits (design invariant 3); relays lease rows to forward them to a broker.
 *
 * One implementation per database (`@bus/postgres-notify` for Postgres, the in-memory
 * one in core). The core never imports a database driver.
 *
 * @module
 */

/** A (tenant, channel) pair: the unit of subscription and ordering. */
export interface Address {
  readonly tenant: string
  readonly channel: string
}

/** One page of committed events after a cursor. */
export interface OutboxPage {
  readonly events: ReadonlyArray<DeliveredEvent>
  /** Cursor after this page. Valid even when `events` is empty: reading from it continues without gap. */
  readonly next: string
  /** True when the page was cut at `limit`: more may follow immediately. */
  readonly more: boolean
}

/** A row a relay has leased for forwarding. */
export interface LeasedEvent {
  readonly event: Envelope
  /** Delivery attempts so far, including this one. */
  readonly attempts: number
  /**
   * The event's place in the outbox, in the store's own opaque form. A broker stores it with
   * the event, so that a subscriber resuming from an outbox cursor after a transport flip
   * skips exactly the events that cursor covers ({@link OutboxStore}'s `covers`).
   */
  readonly position?: string
  /**
   * An outbox cursor that covers only events of this address that reach the broker at or
   * before this one (forwarded earlier, or earlier in this batch), when the relay sends the
   * batch in lease order. A broker appends it to the cursor of this event (`~frontier`), so
   * a subscriber flipped back to the outbox resumes from it with no gap.
   */
  readonly frontier?: string
}

/** A consumer group of one address: the key of its inbox. */
export interface GroupKey extends Address {
  readonly group: string
}

/** Outcome of a failed forward, reported back by the relay. */
export interface ForwardFailure {
  readonly id: string
  readonly error: string
  /** Park the row in the dead-letter place now instead of retrying it. */
  readonly park: boolean
}

/** A dead-lettered event and why it was parked. */
export interface DeadLetter {
  readonly event: Envelope
  readonly reason: string
  /** `relay` for rows the relay gave up on, otherwise the consumer group that gave up. */
  readonly source: string
  readonly attempts: number
  readonly at: string
}

/** A consumer group's durable position, held by one consumer at a time. */
export interface GroupClaim {
  /** Cursor to resume from, or `"beginning"` for a group that never acknowledged anything. */
  readonly cursor: string
  /**
   * Store the group's position after an acknowledged event; with `handled`, record that
   * event id in the group's inbox in the same write (see {@link OutboxStore}'s `handled`).
   */
  readonly commit: (cursor: string, handled?: string) => Effect.Effect<void, BusError>
}

/** The outbox contract. */
export class OutboxStore extends Context.Service<
  OutboxStore,
  {
    /** Store name, used as the cursor prefix and in logs. */
    readonly name: string
    /**
     * Appends events inside the caller's open transaction `tx` (a driver object the
     * store understands). Fails with `NotInTransaction` for anything else. The events
     * become visible exactly when, and only if, that transaction commits.
     */
    readonly append: (tx: unknown, events: ReadonlyArray<Envelope>) => Effect.Effect<void, BusError>
    /** Committed events of one address after `after` (`"beginning"` for the oldest retained), at most `limit`. */
    readonly read: (address: Address, after: string, limit: number) => Effect.Effect<OutboxPage, BusError>
    /** A cursor meaning "everything committed so far" for the address. */
    readonly head: (address: Address) => Effect.Effect<string, BusError>
    /**
     * Wake-ups: emits an address whenever events for it may have committed (a
     * notification, or the store's own fallback check). Coarse and possibly spurious;
     * readers always re-read from their cursor, so a missed or extra wake-up loses nothing.
     */
    readonly changes: Stream.Stream<Address, BusError>
    /**
     * Registers interest in an address for the life of the scope, so `changes` covers it
     * (the Postgres store LISTENs on the address's channel). Idle addresses cost nothing.
     */
    readonly watch: (address: Address) => Effect.Effect<void, BusError, Scope.Scope>
    /** Leases up to `limit` unforwarded rows for `leaseMs` to relay `owner` (rows leased by a live relay are skipped). */
    readonly lease: (
      owner: string,
      limit: number,
      leaseMs: number,
    ) => Effect.Effect<ReadonlyArray<LeasedEvent>, BusError>
    /** Marks leased rows as forwarded. */
    readonly complete: (owner: string, ids: ReadonlyArray<string>) => Effect.Effect<void, BusError>
    /** Returns leased rows that were not attempted (an earlier event of their channel failed), without counting an attempt. */
    readonly release: (owner: string, ids: ReadonlyArray<string>) => Effect.Effect<void, BusError>
    /** Returns leased rows after a failed forward; rows over `maxAttempts` or marked `park` move to dead letters. */
    readonly fail: (
      owner: string,
      failures: ReadonlyArray<ForwardFailure>,
      maxAttempts: number,
    ) => Effect.Effect<{ readonly parked: number }, BusError>
    /** Unforwarded rows waiting for a relay. */
    readonly backlog: Effect.Effect<number, BusError>
    /** Claims a consumer group's position for the life of the scope; waits while another process holds it. */
    readonly claimGroup: (address: Address, group: string) => Effect.Effect<GroupClaim, BusError, Scope.Scope>
    /** Parks an event a consumer group or relay gave up on. */
    readonly deadLetter: (letter: DeadLetter) => Effect.Effect<void, BusError>
    /** Dead-lettered events, newest first. */
    readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<DeadLetter>, BusError>
    /**
     * True when `cursor` is a cursor of this outbox (its format and, where it has one, its
     * epoch). Broker transports use it to recognise an outbox cursor after a transport flip.
     */
    readonly ownsCursor: (cursor: string) => boolean
    /**
     * Whether the event at `position` (a {@link LeasedEvent} position) is covered by
     * `cursor`, i.e. was delivered before it by a subscription reading this outbox. Pure: no
     * query. `undefined` when the two cannot be compared (another outbox or epoch, or not
     * this store's formats).
     */
    readonly covers: (cursor: string, position: string) => boolean | undefined
    /**
     * The group's inbox: which of `ids` the group has handled (on any transport). Together
     * with {@link OutboxStore}'s `markHandled` it lets a group move between transports
     * without running a handler twice for one event.
     */
    readonly handled: (
      key: GroupKey,
      ids: ReadonlyArray<string>,
    ) => Effect.Effect<ReadonlySet<string>, BusError>
    /** Records `ids` as handled by the group (idempotent). */
    readonly markHandled: (key: GroupKey, ids: ReadonlyArray<string>) => Effect.Effect<void, BusError>
    /**
     * The outbox cursor the group last committed on an outbox transport (every event it
     * covers was handled or dead-lettered by the group), or `undefined` for a group that
     * never committed one. Read only: it does not claim the group.
     */
    readonly groupCursor: (key: GroupKey) => Effect.Effect<string | undefined, BusError>
    /**
     * Deletes rows committed more than `olderThanMs` ago; with `keepUnforwarded` (a broker
     * transport is in use) rows the relay has not forwarded yet are kept. Cursors older
     * than the pruned rows then fail with `CursorInvalid` reason `expired`. Inbox entries of
     * events handled more than `olderThanMs` ago go with them. Returns how many outbox rows.
     */
    readonly prune: (
      olderThanMs: number,
      options: { readonly keepUnforwarded: boolean },
    ) => Effect.Effect<number, BusError>
  }
>()("@bus/core/OutboxStore") {}
