import { Effect } from "effect"
import type { Address } from "../contracts/outboxStore.js"
import type { DeliveredEvent } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"
import type { FeedLog, FeedPage, FeedStats } from "../outboxTransport/feed.js"
import type { AnchoredFilter } from "./anchor.js"

/**
 * What a broker subscriber does with the pages of its address's shared log (core
 * `FeedLog`) and of its own catch-up reads: it delivers what lies after the broker position
 * it has delivered up to (a JetStream sequence, a Redis entry id) and what its filters keep,
 * and hands the shared page itself over when that is all of it. Both brokers' subscribers
 * are a {@link PositionGate} plus what differs: how they catch up, and what a lost stream
 * means.
 *
 * @module
 */

/** A broker message as a gate sees it. */
export interface GateItem<P> {
  /** Its broker position (positions only grow along an address). */
  readonly pos: P
  /** The decoded event; `undefined` for a malformed message (skipped, but it still moves the position). */
  readonly event: DeliveredEvent | undefined
  /** The outbox position the relay stored with it (cursors across a flip). */
  readonly position: string | undefined
  /** `event.time` in ms, parsed once for every subscriber's "now" filter. */
  readonly at: number
}

/** What a feed knows of one page of its log. */
export interface GatePage<P, I extends GateItem<P>> {
  /** Every message after `from` up to `to` is in the page (or was left out: malformed, a repeat). */
  readonly from: P
  readonly to: P
  /** The page's items, one per event of the page, in the same order. */
  readonly items: ReadonlyArray<I>
  /** The earliest event time of the page (ms): the "now" filter is one compare per page. */
  readonly minAt: number
}

/**
 * A subscriber's position and filters (see the module comment). `keep` drops messages an
 * outbox cursor covers (after a flip, or after a recovery); `filter` is an anchored "now"
 * cursor's. Where the filter must ask the outbox, the rest of the page is `held` and
 * {@link PositionGate.admitHeld} delivers it.
 */
export class PositionGate<P, I extends GateItem<P>> {
  /** Items behind one the "now" filter must ask the outbox about. */
  held: ReadonlyArray<I> | undefined
  /** The last item handed on (its outbox frontier is where a subscriber resumes after a loss). */
  lastItem: I | undefined

  constructor(
    readonly compare: (a: P, b: P) => number,
    /** Position delivered up to (or skipped): everything at or below it is done. */
    public last: P,
    public keep: ((position: string | undefined) => boolean) | undefined,
    public filter: AnchoredFilter | undefined,
  ) {}

  /**
   * What of a shared log page this subscriber delivers: the page's own array when that is
   * all of it (the common case: one compare, no per-event work), `[]` when nothing (check
   * {@link PositionGate.held}).
   */
  page(meta: GatePage<P, I>, events: ReadonlyArray<DeliveredEvent>): ReadonlyArray<DeliveredEvent> {
    if (this.compare(meta.to, this.last) <= 0) return []
    if (
      this.compare(meta.from, this.last) >= 0 &&
      this.keep === undefined &&
      (this.filter === undefined || this.filter.keepsAll(meta.minAt))
    ) {
      this.last = meta.to
      if (meta.items.length > 0) this.lastItem = meta.items[meta.items.length - 1]
      return events
    }
    const out = this.admit(meta.items, events)
    if (this.held === undefined && this.compare(meta.to, this.last) > 0) this.last = meta.to
    return out
  }

  /**
   * What of `items` this subscriber delivers: those after `last` that its filters keep,
   * `shared` itself when that is all of them. Stops at an item the "now" filter must ask
   * the outbox about: the rest is {@link PositionGate.held}.
   */
  admit(items: ReadonlyArray<I>, shared?: ReadonlyArray<DeliveredEvent>): ReadonlyArray<DeliveredEvent> {
    let out: Array<DeliveredEvent> | undefined = shared === undefined ? [] : undefined
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!
      const after = this.compare(item.pos, this.last) > 0
      let take: boolean | undefined =
        after && item.event !== undefined && (this.keep === undefined || this.keep(item.position))
      if (take && this.filter !== undefined) take = this.filter.now(item.event!.id, item.at)
      if (take === undefined) {
        this.held = items.slice(i)
        return out ?? shared!.slice(0, i)
      }
      if (after) this.last = item.pos
      if (take) {
        this.lastItem = item
        out?.push(item.event!)
      } else out ??= shared!.slice(0, i)
    }
    return out ?? shared!
  }

  /** Delivers the held items, asking the outbox where the "now" filter cannot tell at once. */
  readonly admitHeld: Effect.Effect<Array<DeliveredEvent>> = Effect.suspend(() => {
    const gate = this
    const items = gate.held ?? []
    gate.held = undefined
    return Effect.gen(function* () {
      const out: Array<DeliveredEvent> = []
      for (const item of items) {
        if (gate.compare(item.pos, gate.last) <= 0) continue
        gate.last = item.pos
        if (item.event === undefined || (gate.keep !== undefined && !gate.keep(item.position))) continue
        if (gate.filter !== undefined && gate.filter.now(item.event.id, item.at) === undefined) {
          if (!(yield* gate.filter.later(item.event.id))) continue
        }
        gate.lastItem = item
        out.push(item.event)
      }
      return out
    })
  })
}

/** Where a subscriber is in its address's log: the next page's index (-1 while not in the log), and why the log ended for it. */
export interface LogPlace {
  index: number
  ended: BusError | undefined
}

/**
 * A broker subscriber's `poll` over its address's {@link FeedLog} (core `FeedCursor`): takes
 * the pages from `place.index` on and hands each to `onPage`, which says what to deliver of
 * it, `"step"` (the subscriber must do something first: ask the outbox, recover), or
 * `undefined` (nothing of it: the next page). A subscriber that fell out of the log's window
 * leaves it (index -1: it reads from its own position in `step`); a log that ended is
 * remembered in `place.ended` for `step`.
 */
export const pollLog = (
  log: FeedLog,
  place: LogPlace,
  onPage: (events: ReadonlyArray<DeliveredEvent>) => ReadonlyArray<DeliveredEvent> | "step" | undefined,
): FeedPage | "wait" | "step" => {
  for (;;) {
    const found = log.take(place.index)
    switch (found._tag) {
      case "page": {
        place.index++
        const out = onPage(found.events)
        if (out === "step") return "step"
        if (out !== undefined && out.length > 0) return { events: out, live: true }
        continue
      }
      case "wait":
        return "wait"
      case "lagged":
        // Fell out of the window: nothing was kept for it; it reads from its own position.
        place.index = -1
        return "step"
      case "failed":
        place.ended = found.error
        return "step"
    }
  }
}

/**
 * The log index where a subscriber that has everything up to `after` joins a broker feed's
 * log: the log's end when `after` is at or past the feed's `position`; else the kept page
 * that holds what follows `after`, looked for newest first (a subscriber just behind the
 * feed finds it at once); else `undefined` (the log no longer holds it all: the subscriber
 * reads from the broker first). `pageOf` gives a page's bounds, or `undefined` where the
 * search must stop (a page of another stream). `startAfter`, when given, is where the feed
 * started: a log with no page yet still covers everything after it.
 */
export const indexAfter = <P>(
  log: FeedLog,
  compare: (a: P, b: P) => number,
  after: P,
  position: P,
  startAfter: P | undefined,
  pageOf: (events: ReadonlyArray<DeliveredEvent>) => { readonly from: P; readonly to: P } | undefined,
): number | undefined => {
  if (compare(after, position) >= 0) return log.end
  let found: number | undefined
  for (let i = log.end - 1; ; i--) {
    const page = log.take(i)
    if (page._tag !== "page") break
    const bounds = pageOf(page.events)
    if (bounds === undefined) break
    if (compare(bounds.to, after) <= 0) return i + 1
    found = i
    if (compare(bounds.from, after) <= 0) return i
  }
  return found === undefined && startAfter !== undefined && compare(after, startAfter) >= 0
    ? log.end
    : undefined
}

/** The key of an address in a broker's per-address maps (checked names never hold NUL). */
export const addressKey = (a: Address): string => `${a.tenant}\u0000${a.channel}`

/** The address of an {@link addressKey}. */
export const addressOfKey = (key: string): Address => {
  const [tenant = "", channel = ""] = key.split("\u0000")
  return { tenant, channel }
}

/** The `stats` a broker attaches with `attachFeedCursor`: each live log's {@link FeedStats}, by `tenant/channel`. */
export const feedLogStats = (logs: ReadonlyMap<string, FeedLog>): ReadonlyMap<string, FeedStats> => {
  const out = new Map<string, FeedStats>()
  for (const [key, log] of logs) out.set(key.replace("\u0000", "/"), log.stats())
  return out
}
