import { Effect, type Scope } from "effect"
import type { Address } from "../contracts/outboxStore.js"
import type { Transport } from "../contracts/transport.js"
import type { DeliveredEvent } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"

/**
 * The shared log of one address's feed: the pages the feed read, in order, each page
 * one array shared by every local subscriber. A subscriber holds only an index into the
 * log; taking a page is an index check and handing over that same array, so one event
 * costs one read and one decode per process however many subscribers there are.
 *
 * The log keeps at most `window` events (at least the newest page). A subscriber whose
 * index fell below the oldest kept page is *lagged*: it does not hold the log back and
 * nothing is buffered for it; it goes back to reading the outbox from its own cursor and
 * rejoins. So the memory of a subscriber that stops pulling is one index, whatever the
 * backlog, and the log's memory is bounded per address.
 *
 * The log also remembers the feed's own positions (*marks*: the cursor the feed had read
 * up to, and the log index where what follows it begins). A subscriber that starts at a
 * marked cursor (one the transport handed out as "now") joins the log at that index with
 * no read of its own: ten thousand subscribers starting together cost the feed's reads,
 * not ten thousand catch-up queries.
 *
 * A transport whose feed is such a log hands its subscribers out as {@link FeedCursor}s
 * ({@link attachFeedCursor}): the Promise facade then pulls pages itself, with no fiber,
 * stream or queue per subscription. The outbox transports (`OutboxTransport.ts`) and NATS
 * (`@bus/nats` `subscribe.ts`) do; what differs between them is only how a subscriber
 * catches up and where it joins the log.
 *
 * @module
 */

/** What {@link FeedLog.take} found at an index. */
export type Take =
  | { readonly _tag: "page"; readonly events: ReadonlyArray<DeliveredEvent> }
  /** Nothing new yet: wait with {@link FeedLog.onAppend}. */
  | { readonly _tag: "wait" }
  /** The index fell out of the window: resume from the subscriber's own cursor. */
  | { readonly _tag: "lagged" }
  /** The feed failed for good; every subscriber gets this once it has taken what came before. */
  | { readonly _tag: "failed"; readonly error: BusError }

const waitTake: Take = { _tag: "wait" }
const laggedTake: Take = { _tag: "lagged" }

/** A point-in-time view of a feed, for tests and diagnostics. */
export interface FeedStats {
  /** Pages the log holds. */
  readonly pages: number
  /** Events across those pages (at most the window, or one page when a page alone is larger). */
  readonly events: number
  /** Subscribers waiting for the next page. */
  readonly waiting: number
}

/** See the module comment. */
export class FeedLog {
  #pages: Array<ReadonlyArray<DeliveredEvent>> = []
  /** Log index of `#pages[#head]`. */
  #base = 0
  /** Offset of the oldest live page in `#pages` (shifted lazily, so trimming is O(1)). */
  #head = 0
  #events = 0
  #waiters = new Set<() => void>()
  #failure: BusError | undefined
  /** Refusals by log index (an empty page marks the place): see {@link FeedLog.refuse}. */
  readonly #refusals = new Map<number, BusError>()
  /** Feed positions: cursor → log index of the first page after it, oldest first (see {@link FeedLog.mark}). */
  readonly #marks = new Map<string, number>()

  constructor(readonly window: number) {}

  /** Most marks kept: each page and each feed read adds one, so this covers the window's pages many times over. */
  static readonly maxMarks = 1024

  /**
   * Records that the feed has read everything up to `cursor`: what follows it starts at
   * {@link FeedLog.end}. Call after appending the page that `cursor` ends.
   */
  mark(cursor: string): void {
    this.#marks.delete(cursor)
    this.#marks.set(cursor, this.end)
    this.#trimMarks()
  }

  /** The log index where events after `cursor` begin, if `cursor` is a mark still in the window. */
  indexOf(cursor: string): number | undefined {
    const index = this.#marks.get(cursor)
    return index !== undefined && index >= this.#base ? index : undefined
  }

  /** Index just past the newest page: where a subscriber joining now starts. */
  get end(): number {
    return this.#base + this.#pages.length - this.#head
  }

  get failure(): BusError | undefined {
    return this.#failure
  }

  stats(): FeedStats {
    return { pages: this.#pages.length - this.#head, events: this.#events, waiting: this.#waiters.size }
  }

  /** Adds a page, trims to the window, and wakes every waiting subscriber in one pass. */
  append(events: ReadonlyArray<DeliveredEvent>): void {
    this.#pages.push(events)
    this.#events += events.length
    while (this.#events > this.window && this.#pages.length - this.#head > 1) {
      this.#events -= this.#pages[this.#head]!.length
      this.#pages[this.#head] = undefined as never
      this.#head++
      this.#base++
    }
    // Compact once the dead prefix is as long as the live part: amortised O(1) per page.
    if (this.#head > 64 && this.#head * 2 >= this.#pages.length) {
      this.#pages = this.#pages.slice(this.#head)
      this.#head = 0
    }
    this.#trimMarks()
    this.#wake()
  }

  /** Ends the feed with `error` (after the pages already in the log). */
  fail(error: BusError): void {
    this.#failure ??= error
    this.#wake()
  }

  /**
   * Ends the log for every subscriber already in it (once they took the pages before), but
   * not for those who join afterwards: the feed's own position was refused (the outbox's
   * epoch changed) and the feed starts again from the head.
   */
  refuse(error: BusError): void {
    // Every mark is a position of the refused history: a client resuming from one must be
    // checked (and refused) by the store, not joined here.
    this.#marks.clear()
    this.#refusals.set(this.end, error)
    for (const at of this.#refusals.keys()) if (at < this.#base) this.#refusals.delete(at)
    this.#pages.push([])
    this.#wake()
  }

  /** The page at `index`, or why there is none. */
  take(index: number): Take {
    if (index < this.#base) return laggedTake
    const refused = this.#refusals.get(index)
    if (refused !== undefined) return { _tag: "failed", error: refused }
    const at = index - this.#base + this.#head
    if (at < this.#pages.length) return { _tag: "page", events: this.#pages[at]! }
    return this.#failure !== undefined ? { _tag: "failed", error: this.#failure } : waitTake
  }

  /** Calls `wake` once, at the next append or failure; returns how to cancel. */
  onAppend(wake: () => void): () => void {
    this.#waiters.add(wake)
    return () => this.#waiters.delete(wake)
  }

  /** Drops marks that fell out of the window (they are in index order) and the oldest beyond the cap. */
  #trimMarks(): void {
    for (const [cursor, index] of this.#marks) {
      if (index >= this.#base && this.#marks.size <= FeedLog.maxMarks) break
      this.#marks.delete(cursor)
    }
  }

  #wake(): void {
    if (this.#waiters.size === 0) return
    const waiters = this.#waiters
    this.#waiters = new Set()
    for (const wake of waiters) wake()
  }
}

/** A page a {@link FeedCursor} hands over, and whether it came from the shared log (live) or a catch-up read. */
export interface FeedPage {
  readonly events: ReadonlyArray<DeliveredEvent>
  readonly live: boolean
}

/**
 * A subscriber's position in an address's feed, for a reader that pulls without a fiber
 * of its own (the Promise facade). `poll` hands over the next log page when there is one
 * (an index check); `"wait"`: nothing yet, call `onAppend`; `"step"`: run `step` (a join
 * and catch-up read, or the feed's failure), then poll again.
 *
 * @internal
 */
export interface FeedCursor {
  /** The cursor this subscriber starts after (for `"now"`, the feed's position when it joined). */
  readonly start: string
  readonly poll: () => FeedPage | "wait" | "step"
  readonly step: Effect.Effect<FeedPage | undefined, BusError>
  readonly onAppend: (wake: () => void) => () => void
}

/**
 * Opens a subscriber's {@link FeedCursor} (in the scope: closing it leaves the feed). With
 * `joinNow`, `"now"` is fixed by the feed itself after the call (for a reader that reports
 * its start, like the facade's `ready`); without it, `"now"` is the head when the call is made.
 *
 * @internal
 */
export type OpenFeedCursor = (
  address: Address,
  from: string,
  joinNow?: boolean,
) => Effect.Effect<FeedCursor, BusError, Scope.Scope>

const feedCursorKey = Symbol.for("@bus/core/feedCursor")
const feedStatsKey = Symbol.for("@bus/core/feedStats")

/**
 * Gives a transport's service its {@link OpenFeedCursor} (and, for tests and diagnostics,
 * its logs' {@link FeedStats} per address `tenant/channel`). Not enumerable: a transport
 * that wraps another by spreading it (memoryBroker) has its own `subscribe`, so it must not
 * inherit the facade's direct path.
 *
 * @internal
 */
export const attachFeedCursor = <S extends Transport["Service"]>(
  service: S,
  open: OpenFeedCursor,
  stats?: () => ReadonlyMap<string, FeedStats>,
): S => {
  Object.defineProperty(service, feedCursorKey, { value: open, enumerable: false })
  if (stats !== undefined) Object.defineProperty(service, feedStatsKey, { value: stats, enumerable: false })
  return service
}

/**
 * The {@link OpenFeedCursor} of a transport that serves its subscribers from a {@link FeedLog},
 * or `undefined` for one that does not.
 *
 * @internal
 */
export const feedCursorOf = (transport: Transport["Service"]): OpenFeedCursor | undefined =>
  (transport as unknown as { [feedCursorKey]?: OpenFeedCursor })[feedCursorKey]

/**
 * The shared logs of a transport, per address (`tenant/channel`), or `undefined` for a
 * transport without them. For tests and diagnostics: it shows that what a process holds
 * for its subscribers is bounded whatever they do.
 *
 * @internal
 */
export const feedStatsOf = (transport: Transport["Service"]): ReadonlyMap<string, FeedStats> | undefined =>
  (transport as unknown as { [feedStatsKey]?: () => ReadonlyMap<string, FeedStats> })[feedStatsKey]?.()

/**
 * The next non-empty page of `cursor`, as an effect: how an Effect `Stream` (or a consumer
 * group) reads a {@link FeedCursor}. Each page is handed on as it is (the log's shared
 * array, not a copy).
 */
export const nextFeedPage = (cursor: FeedCursor): Effect.Effect<FeedPage, BusError> => {
  // One-argument callback: no AbortSignal is made per wait.
  const waitAppend = Effect.callback<void>((resume) => {
    const cancel = cursor.onAppend(() => resume(Effect.void))
    return Effect.sync(cancel)
  })
  const next = (): Effect.Effect<FeedPage, BusError> => {
    const found = cursor.poll()
    if (found === "wait") return Effect.flatMap(waitAppend, next)
    if (found === "step")
      return Effect.flatMap(cursor.step, (page) => (page !== undefined ? Effect.succeed(page) : next()))
    return Effect.succeed(found)
  }
  return Effect.suspend(next)
}
