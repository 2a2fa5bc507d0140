import { Context, type Effect, type Scope, type Stream } from "effect"
import type { DeliveredEvent } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"

/**
 * Reading the outbox: committed events of one address after a cursor, the wake-ups that
 * say when to read again, and what the store's cursors mean. With {@link OutboxWriter} it is
 * all a new database needs for `publish` and `subscribe` (docs/new-transport.md).
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

/**
 * Committed events by address and cursor. Readers see only committed events, in an order
 * that is safe against out-of-order commits (design invariant 3). The outbox transport and
 * every broker's cursor checks need only this.
 *
 * @example
 * ```ts
 * import { OutboxReader } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * // Every committed event of one address, page by page.
 * const all = Effect.gen(function* () {
 *   const reader = yield* OutboxReader
 *   let page = yield* reader.read({ tenant: "acme", channel: "orders" }, "beginning", 100)
 *   const events = [...page.events]
 *   while (page.more) {
 *     page = yield* reader.read({ tenant: "acme", channel: "orders" }, page.next, 100)
 *     events.push(...page.events)
 *   }
 *   return events
 * })
 * ```
 */
export class OutboxReader extends Context.Service<
  OutboxReader,
  {
    /** Store name, used as the cursor prefix and in logs. */
    readonly name: string
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
    /**
     * True when `cursor` is a cursor of this outbox (its format and, where it has one, its
     * epoch). Broker transports use it to recognise an outbox cursor after a transport flip.
     */
    readonly ownsCursor: (cursor: string) => boolean
    /**
     * Whether the event at `position` (a `RelayedEvent` position, see `OutboxRelay`) is
     * covered by `cursor`, i.e. was delivered before it by a subscription reading this
     * outbox. Pure: no query. `undefined` when the two cannot be compared (another outbox or
     * epoch, or not this store's formats; always, for a store without a relay log).
     */
    readonly covers: (cursor: string, position: string) => boolean | undefined
  }
>()("@bus/core/OutboxReader") {}
