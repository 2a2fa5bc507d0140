import { Effect, Option, type Scope } from "effect"
import type { Address, OutboxStore } from "../contracts/OutboxStore.js"
import type { BusError } from "../errors/BusError.js"
import { coalesce } from "./coalesce.js"
import { retryWhileRetryable } from "./retry.js"

/**
 * "now" on a relayed transport (a broker fed by the relay from the outbox). The broker's
 * position when a subscription starts is not enough: events committed just before may still
 * be on their way through the relay and land above it. So the cursor "now" hands out is
 * *anchored*: beside the broker's position it carries the time and the outbox head when it
 * was taken ({@link Anchor}), and a subscription from it keeps a message above the position
 * only when it committed after the anchor ({@link anchoredFilter}).
 *
 * The brokers write the anchor into their own cursor format and read it back; what is here
 * is the part they share: the outbox head, read once per address per burst of
 * subscriptions ({@link outboxHeads}), and the filter.
 *
 * @module
 */

/** When an anchored "now" cursor was taken: the time (ms) and the outbox's head cursor at that moment. */
export interface Anchor {
  readonly at: number
  readonly outboxHead: string
}

/**
 * The outbox head of an address, for anchored "now" cursors: retried while the outbox
 * fails for a moment, and coalesced per address (see `coalesce`, `"inFlight"`): the first
 * call reads it at once, in the call, and the calls made until it answers share that read
 * and its pooled connection. A call that joins gets a head a little older than its call:
 * its subscription may deliver an event committed just before it, never miss one committed
 * after. `undefined` without an outbox.
 */
export const outboxHeads = (
  scope: Scope.Scope,
  store: Option.Option<OutboxStore["Service"]>,
  what: string,
): ((address: Address) => Effect.Effect<string, BusError>) | undefined => {
  if (Option.isNone(store)) return undefined
  const outbox = store.value
  // Checked names never hold NUL: the key is the address, and it is read back from it.
  const read = coalesce(
    scope,
    (key) => {
      const [tenant = "", channel = ""] = key.split("\u0000")
      return retryWhileRetryable(outbox.head({ tenant, channel }), `${what}: reading the outbox head`)
    },
    `${what}: the transport is closing`,
    "inFlight",
  )
  return (address) => read(`${address.tenant}\u0000${address.channel}`)
}

/**
 * Tells, per message above an anchored cursor's broker position, whether it committed after
 * the anchor: a message published after the anchor's time did; an older one (a relay's
 * backlog, or a transaction that was open across the anchor) did only if the outbox has it
 * after the anchor's head. The outbox is read for such messages only, from where the last
 * read stopped, as far as needed.
 *
 * If the outbox cannot answer for good (the head was pruned), the filter keeps everything
 * from then on rather than risk losing an event. A producer clock ahead of this one can let
 * an event committed just before the anchor through; nothing committed after it is dropped.
 */
export interface AnchoredFilter {
  /** At once, when the time or an earlier read decides: true to keep; undefined when only {@link AnchoredFilter.later} can tell. */
  readonly now: (id: string, at: number) => true | undefined
  /** Reads the outbox after the anchor's head as far as needed, then decides. */
  readonly later: (id: string) => Effect.Effect<boolean>
  /** True when every message of a page whose earliest time is `minAt` is kept (one compare per page). */
  readonly keepsAll: (minAt: number) => boolean
}

/** See {@link AnchoredFilter}; `what` names the transport in the warning. */
export const anchoredFilter = (
  store: OutboxStore["Service"],
  address: Address,
  anchor: Anchor,
  pageSize: number,
  what: string,
): AnchoredFilter => {
  let cursor = anchor.outboxHead
  let unreadable = false
  /** Ids of early-published events found in the outbox after the head and not yet delivered. */
  const after = new Set<string>()
  const scan = retryWhileRetryable(
    Effect.gen(function* () {
      for (;;) {
        const page = yield* store.read(address, cursor, pageSize)
        for (const e of page.events) if (!(Date.parse(e.time) > anchor.at)) after.add(e.id)
        cursor = page.next
        if (!page.more) return
      }
    }),
    `${what}: outbox read for a head cursor`,
  ).pipe(
    Effect.catch((e: BusError) =>
      Effect.logWarning(
        `${what}: cannot tell events committed before a head cursor apart (${e.message}); delivering them`,
      ).pipe(
        Effect.andThen(
          Effect.sync(() => {
            unreadable = true
          }),
        ),
      ),
    ),
  )
  return {
    now: (id, at) => (unreadable || at > anchor.at || after.delete(id) ? true : undefined),
    later: (id) => scan.pipe(Effect.map(() => unreadable || after.delete(id))),
    keepsAll: (minAt) => unreadable || minAt > anchor.at,
  }
}
