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

/** A committed row as the relay reads it: the event and where it sits in the outbox. */
export interface RelayedEvent {
  readonly event: Envelope
  /**
   * The event's place in the outbox, in the store's own opaque form. A broker stores it with
   * the event, so that a subscriber resuming from an outbox cursor after a transport flip
   * skips exactly the events that cursor covers ({@link OutboxStore}'s `covers`).
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

/** A consumer group of one address: the key of its inbox. */
export interface GroupKey extends Address {
  readonly group: string
}

/** A consumer group across tenants: every address of `channel` (see {@link GroupMembership}). */
export interface MemberKey {
  readonly channel: string
  readonly group: string
}

/** What one member's heartbeat returns: who else is live, and which addresses this member holds. */
export interface Heartbeat {
  /** Live members of the group other than the caller (any order). */
  readonly others: ReadonlyArray<string>
  /** Tenants whose address lease the caller holds (see {@link GroupMembership}'s `lease`). */
  readonly held: ReadonlyArray<string>
}

/**
 * Membership and per-address hand-off for consumer groups across tenants (`consume` with
 * `tenant: "*"`). Members of one (channel, group) register with a lease they renew; each
 * runs the addresses that hash to it among the live members, and holds a lease on every
 * address it runs, so two members never run one address at once (per-address order
 * through a rebalance, on brokers too). An address lease lives as long as its member: a
 * member's heartbeat renews all of its address leases in one write, and a lease whose member
 * is no longer live may be taken by another.
 */
export interface GroupMembership {
  /**
   * Tenants with committed events on `channel` in the outbox now (any order). Read from an
   * index the outbox already has: publishing pays nothing for it.
   */
  readonly tenants: (channel: string) => Effect.Effect<ReadonlyArray<string>, BusError>
  /**
   * Registers `member` as live for `leaseMs` (or renews it), forgets members whose lease ran
   * out, and reports the others and the caller's address leases.
   */
  readonly heartbeat: (key: MemberKey, member: string, leaseMs: number) => Effect.Effect<Heartbeat, BusError>
  /**
   * Takes the address leases of `tenants` for `member` where they are free, already the
   * member's, or held by a member that is no longer live; returns the tenants now held. A
   * member that is not live itself takes nothing.
   */
  readonly lease: (
    key: MemberKey,
    member: string,
    tenants: ReadonlyArray<string>,
  ) => Effect.Effect<ReadonlyArray<string>, BusError>
  /** Gives the leases of `tenants` up (after the member stopped running those addresses). */
  readonly release: (
    key: MemberKey,
    member: string,
    tenants: ReadonlyArray<string>,
  ) => Effect.Effect<void, BusError>
  /** Leaves the group at once: the member and every lease it holds. */
  readonly leave: (key: MemberKey, member: string) => Effect.Effect<void, BusError>
}

/**
 * Header a replayed dead letter carries (the replay's time): consumer groups look such an
 * event up in their inbox even when it arrives live, so only the group that gave up on it
 * handles it again.
 */
export const replayedHeader = "bus-replayed-at"

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
    /** The relay's side: the outbox read as a partitioned log (see {@link RelayLog}). */
    readonly relay: RelayLog
    /** Claims a consumer group's position for the life of the scope; waits while another process holds it. */
    readonly claimGroup: (address: Address, group: string) => Effect.Effect<GroupClaim, BusError, Scope.Scope>
    /**
     * Parks an event a consumer group or relay gave up on. A group's letter also records the
     * event in that group's inbox, in the same write: a replay (which removes both) then
     * finds both or neither, never a letter whose inbox entry lands after the replay.
     */
    readonly deadLetter: (letter: DeadLetter) => Effect.Effect<void, BusError>
    /** Dead-lettered events, newest first. */
    readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<DeadLetter>, BusError>
    /**
     * True when `cursor` is a cursor of this outbox (its format and, where it has one, its
     * epoch). Broker transports use it to recognise an outbox cursor after a transport flip.
     */
    readonly ownsCursor: (cursor: string) => boolean
    /**
     * Whether the event at `position` (a {@link RelayedEvent} position) is covered by
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
     * Membership for consumer groups across tenants. Optional: a store without it serves
     * only single-address groups (`consume` with `tenant: "*"` fails with `ConfigError`).
     */
    readonly members?: GroupMembership | undefined
    /**
     * Deletes rows committed more than `olderThanMs` ago; with `keepUnforwarded` (a broker
     * transport is in use) rows the relay has not forwarded yet are kept. Cursors older
     * than the pruned rows then fail with `CursorInvalid` reason `expired`. Inbox entries of
     * events handled more than `olderThanMs` ago go with them. Returns how many outbox rows.
     * With `keepUnforwarded`, "forwarded" means covered by its partition's relay position.
     */
    readonly prune: (
      olderThanMs: number,
      options: { readonly keepUnforwarded: boolean },
    ) => Effect.Effect<number, BusError>
  }
>()("@bus/core/OutboxStore") {}
