import { Context, type Effect, type Scope } from "effect"
import type { BusError } from "../model/errors.js"
import type { Address } from "./outboxReader.js"

/**
 * Consumer groups (`consume`) kept in the outbox: each group's position on an address, its
 * inbox of handled event ids (so a group moves between transports without handling an event
 * twice) and, optionally, membership for groups across tenants. An outbox without it serves
 * `subscribe` only: its transport declares `consumerGroups: false`.
 *
 * @module
 */

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

/** A consumer group's durable position, held by one consumer at a time. */
export interface GroupClaim {
  /** Cursor to resume from, or `"beginning"` for a group that never acknowledged anything. */
  readonly cursor: string
  /**
   * Store the group's position after an acknowledged event; with `handled`, record that
   * event id in the group's inbox in the same write (see {@link GroupStore}'s `handled`).
   */
  readonly commit: (cursor: string, handled?: string) => Effect.Effect<void, BusError>
}

/**
 * Consumer groups' durable state in the outbox: positions, inboxes and membership. The
 * outbox transport's `consume` needs it (with `DeadLetterStore`); on a broker, the
 * subscriber uses it to keep a group's inbox across a flip.
 *
 * @example
 * ```ts
 * import { GroupStore } from "@bus/core/adapter"
 *
 * // Where group "billing" of acme/orders last stood on an outbox transport (no claim taken).
 * const position = GroupStore.use((groups) =>
 *   groups.groupCursor({ tenant: "acme", channel: "orders", group: "billing" }),
 * )
 * ```
 */
export class GroupStore extends Context.Service<
  GroupStore,
  {
    /** Claims a consumer group's position for the life of the scope; waits while another process holds it. */
    readonly claimGroup: (address: Address, group: string) => Effect.Effect<GroupClaim, BusError, Scope.Scope>
    /**
     * The group's inbox: which of `ids` the group has handled (on any transport). Together
     * with {@link GroupStore}'s `markHandled` it lets a group move between transports
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
  }
>()("@bus/core/GroupStore") {}
