import { Deferred, Effect, Exit, Option, type Scope } from "effect"
import type { Address, OutboxReader } from "../contracts/outboxStore.js"
import type { BusError } from "../model/errors.js"
import { coalesce } from "./coalesce.js"
import { addressKey, addressOfKey } from "./gate.js"
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
 * The outbox head of an address, for anchored "now" cursors, as an {@link Anchor}: retried
 * while the outbox fails for a moment, and coalesced per address (see `coalesce`). With
 * `"nextTurn"` the calls of one turn of the event loop share one read, sent after the last
 * of them, so the head is never older than a call. With `"inFlight"` the first call reads it
 * at once, in the call (before anything its caller does next), and the calls made until it
 * answers join that read: their head is a little older than their call, so their
 * subscriptions may deliver an event committed just before, never miss one committed after.
 *
 * The anchor's time is taken once the head is read, so an event stamped after it surely
 * committed after the head; and once per read, so the subscriptions sharing a read share one
 * anchor, and with it one filter ({@link sharedAnchoredFilters}): a thousand subscriptions
 * from "now" started together read the head and the relay's backlog a few times, not a
 * thousand. `undefined` without an outbox.
 */
export const outboxHeads = (
  scope: Scope.Scope,
  store: Option.Option<OutboxReader["Service"]>,
  what: string,
  mode: "nextTurn" | "inFlight" = "nextTurn",
): ((address: Address) => Effect.Effect<Anchor, BusError>) | undefined => {
  if (Option.isNone(store)) return undefined
  const outbox = store.value
  const read = coalesce(
    scope,
    (key) =>
      retryWhileRetryable(outbox.head(addressOfKey(key)), `${what}: reading the outbox head`).pipe(
        Effect.map((outboxHead): Anchor => ({ outboxHead, at: Date.now() })),
      ),
    `${what}: the transport is closing`,
    mode,
  )
  return (address) => read(addressKey(address))
}

/**
 * Tells, per message above an anchored cursor's broker position, whether it committed after
 * the anchor: a message published after the anchor's time did; an older one (a relay's
 * backlog, or a transaction that was open across the anchor) did only if the outbox has it
 * after the anchor's head. The outbox is read for such messages only, from where the last
 * read stopped, as far as needed.
 *
 * What it learns is a fact about the outbox, the same for every subscription anchored there
 * (an event is after the head or not), so one filter serves them all
 * ({@link sharedAnchoredFilters}): a relay backlog seen by a burst of subscribers costs one
 * outbox read, not one per subscriber. Both of its sets hold only events stamped before the
 * anchor's time, which stop coming, so they stay small.
 *
 * If the outbox cannot answer for good (the head was pruned), the filter keeps everything
 * from then on rather than risk losing an event. A producer clock ahead of this one can let
 * an event committed just before the anchor through; nothing committed after it is dropped.
 */
export interface AnchoredFilter {
  /** At once, when the time or an earlier read decides: true to keep, false to drop; undefined when only {@link AnchoredFilter.later} can tell. */
  readonly now: (id: string, at: number) => boolean | undefined
  /** Reads the outbox after the anchor's head as far as needed, then decides. */
  readonly later: (id: string) => Effect.Effect<boolean>
  /** True when every message of a page whose earliest time is `minAt` is kept (one compare per page). */
  readonly keepsAll: (minAt: number) => boolean
}

/** See {@link AnchoredFilter}; `what` names the transport in the warning. */
export const anchoredFilter = (
  store: OutboxReader["Service"],
  address: Address,
  anchor: Anchor,
  pageSize: number,
  what: string,
): AnchoredFilter => {
  let cursor = anchor.outboxHead
  let unreadable = false
  /** Events stamped before the anchor that the outbox holds after the head: kept. */
  const after = new Set<string>()
  /** Events stamped before the anchor that a read begun after they arrived did not find after the head: dropped. */
  const before = new Set<string>()
  // A read covers every message received before it began (the relay sends an event only
  // after it committed). `asked` orders questions and reads; `covered` is the start of the
  // last read done. One read at a time; every question waiting for it resumes when it ends.
  let asked = 0
  let covered = 0
  let reading: Deferred.Deferred<void> | undefined
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
  /** Starts a read; however it ends (done, or interrupted with the subscription that ran it) it wakes its waiters. */
  const startRead = Effect.suspend(() => {
    const started = ++asked
    const done = Deferred.makeUnsafe<void>()
    reading = done
    return scan.pipe(
      Effect.andThen(
        Effect.sync(() => {
          covered = started
        }),
      ),
      Effect.ensuring(
        Effect.sync(() => {
          if (reading === done) reading = undefined
          Deferred.doneUnsafe(done, Exit.void)
        }),
      ),
    )
  })
  /** Whether the outbox has `id` after the head, for a question asked at `since`. */
  const decide = (id: string, since: number): Effect.Effect<boolean> =>
    Effect.suspend(() => {
      if (unreadable || after.has(id)) return Effect.succeed(true)
      if (before.has(id)) return Effect.succeed(false)
      if (covered > since) {
        before.add(id)
        return Effect.succeed(false)
      }
      // A read under way may have begun before the question: wait for it, then look again.
      const wait = reading !== undefined ? Deferred.await(reading) : startRead
      return Effect.andThen(wait, decide(id, since))
    })
  return {
    now: (id, at) => {
      if (unreadable || at > anchor.at || after.has(id)) return true
      return before.has(id) ? false : undefined
    },
    later: (id) => Effect.suspend(() => decide(id, ++asked)),
    keepsAll: (minAt) => unreadable || minAt > anchor.at,
  }
}

/**
 * One {@link anchoredFilter} per address and anchor in this process, shared by the
 * subscriptions anchored there and held for each one's scope (dropped with the last).
 */
export const sharedAnchoredFilters = (
  store: OutboxReader["Service"],
  pageSize: number,
  what: string,
): ((address: Address, anchor: Anchor) => Effect.Effect<AnchoredFilter, never, Scope.Scope>) => {
  const filters = new Map<string, { readonly filter: AnchoredFilter; refs: number }>()
  return (address, anchor) => {
    const key = `${addressKey(address)}\u0000${anchor.at}\u0000${anchor.outboxHead}`
    return Effect.acquireRelease(
      Effect.sync(() => {
        let entry = filters.get(key)
        if (entry === undefined) {
          entry = { filter: anchoredFilter(store, address, anchor, pageSize, what), refs: 0 }
          filters.set(key, entry)
        }
        entry.refs++
        return entry
      }),
      (entry) =>
        Effect.sync(() => {
          if (--entry.refs === 0 && filters.get(key) === entry) filters.delete(key)
        }),
    ).pipe(Effect.map((entry) => entry.filter))
  }
}
