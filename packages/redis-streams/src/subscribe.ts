import { type BusError, CursorInvalid, type DeliveredEvent } from "@bus/core"
import {
  type Address,
  type Anchor,
  addressKey,
  addressOfKey,
  addressTag,
  type BrokerSubscribe,
  checkAddress,
  defaultDedupeWindow,
  defaultFeedWindow,
  type FeedCursor,
  FeedLog,
  type FeedPage,
  feedLogStats,
  feedStream,
  flipCursorExpired,
  type GateItem,
  type GatePage,
  indexAfter,
  type LogPlace,
  notCoveredBy,
  type OpenFeedCursor,
  type OutboxReader,
  outboxCursorOf,
  outboxHeads,
  PositionGate,
  pollLog,
  type SubscribeRequest,
  sharedAnchoredFilters,
} from "@bus/core/adapter"
import { Effect, Option, RcMap, type Scope, type Stream } from "effect"
import {
  type Client,
  connectionLosses,
  ownedConnection,
  parseEntries,
  parseReadReply,
  type RawEntry,
  readWithIdentity,
  replyMarginMs,
  retryTransient,
  runScript,
} from "./connection.js"
import {
  type ChannelKeys,
  type CursorBinding,
  channelKeys,
  compareStreamIds,
  parseCursor,
  type StreamId,
  toCursor,
  toHeadCursor,
} from "./names.js"
import type { ResolvedOptions } from "./options.js"
import { streamIdentity } from "./recovery.js"
import { positionScript } from "./scripts.js"
import { decodeOrSkip, frontierOf, positionOf } from "./wire.js"

/**
 * Subscriptions share one *feed* per tenant channel and process, as on NATS and the outbox
 * transports: the feed reads the stream live with `XREAD BLOCK` on a connection of its own,
 * decodes each entry once, and appends each read, once, as one page of core's `FeedLog`,
 * which every local subscriber of the channel reads by index. A subscriber is a core
 * `FeedCursor` (attached to the transport with `attachFeedCursor`): the Promise facade pulls
 * it with no fiber, stream or queue per subscription, and the Effect `Stream` of `subscribe`
 * reads the same cursor. A thousand subscribers of one channel cost one blocking connection,
 * one decode per entry and one page per read; a subscriber's own cost per page is a position
 * check and a hand-off of the shared array.
 *
 * A subscriber's state is the stream identity and entry id it has delivered up to (and the
 * outbox frontier of its last event). It joins the log at the page after that id, or, when
 * the log no longer holds it, first reads the stream from it (`XRANGE`, a page per pull) and
 * looks again; entries at or below its id are dropped, so the seam has no gap and no
 * duplicate. A subscriber that falls out of the log's window holds nothing and resumes the
 * same way. The feed drops an event id it appended within the last `defaultDedupeWindow`
 * entries (a re-send after the dedupe TTL, or after a recovery, gets a new entry).
 *
 * When the stream loses its data (a restart without persistence, FLUSHALL, a DEL, a failover
 * to a replica that was behind), the feed appends a *loss* page and goes on with the new
 * stream from its start; each subscriber, when it reaches that page (or finds the stream
 * changed under its own cursor), re-reads what it had not delivered from the outbox, then
 * goes on with the new stream, skipping what that read covered.
 *
 * "now" is the stream's last id with, over an outbox, core's anchor (`anchoredFilter`); the
 * head is read once per address per burst of subscriptions (`coalesce`), so ten thousand
 * subscriptions started together cost one read of the stream and one of the outbox.
 *
 * @module
 */

/** An entry read from a stream (`pos`: its id), with the outbox frontier the relay stored with it. */
interface Item extends GateItem<StreamId> {
  readonly event: DeliveredEvent
  readonly frontier: string | undefined
}

/** What the feed knows of one page of its log (core `GatePage`: entries after `from` up to `to`). */
interface PageMeta extends GatePage<StreamId, Item> {
  /** The stream identity the page was read under. */
  readonly identity: string
  /** A loss page (no events): the stream lost its data; identity `from` became `to`. */
  readonly lost?: { readonly from: string; readonly to: string }
}

/** One address's feed, as its subscribers see it. */
interface Feed {
  readonly log: FeedLog
  readonly meta: (page: ReadonlyArray<DeliveredEvent>) => PageMeta
  /** The stream identity the feed reads now. */
  readonly identity: () => string
  /** The log index where what follows entry `after` of stream `identity` begins, or undefined when the log no longer holds it all. */
  readonly indexFor: (identity: string, after: StreamId) => number | undefined
}

/** A start the subscriptions about to create a feed asked for. */
interface Wanted {
  readonly identity: string
  readonly id: StreamId
}

const keyOf = addressKey
const addressOf = addressOfKey

/** How recent (by its entry id's time) a start may be for a new feed to start there, serving its first subscribers from memory. */
const feedStartWindowMs = 10_000

const idTime = (id: StreamId): number => Number(id.slice(0, id.indexOf("-")))

/** Where a stream stands (see `positionScript`). */
export interface StreamPosition {
  /** Last id generated: "now". */
  readonly last: StreamId
  /** First entry still in the stream. */
  readonly first: StreamId
  /** Entries were removed from the stream (trimmed or deleted). */
  readonly trimmed: boolean
  /** Highest id removed with XDEL. */
  readonly maxDeleted: StreamId
}

/** The stream's last and first entry ids and whether it was ever trimmed, read atomically (where "now" is, and whether a replay can be complete). */
export const streamPosition = (main: Client, stream: string): Effect.Effect<StreamPosition, BusError> =>
  runScript(main, positionScript, [stream], []).pipe(
    Effect.map((reply) => {
      const [last, first, trimmed, maxDeleted] = Array.isArray(reply) ? reply : []
      return {
        last: String(last ?? "0-0"),
        first: String(first ?? "0-0"),
        trimmed: Number(trimmed) === 1,
        maxDeleted: String(maxDeleted ?? "0-0"),
      }
    }),
  )

/**
 * True when entries after `cursor` may have been removed: the stream was trimmed past
 * it, or an entry after it was deleted. Conservative: a cursor whose own entry was the
 * last one trimmed is also refused, though nothing after it is missing.
 */
export const entriesLostAfter = (position: StreamPosition, cursor: StreamId): boolean =>
  (position.trimmed && compareStreamIds(cursor, position.first) < 0) ||
  compareStreamIds(position.maxDeleted, cursor) > 0

/**
 * The items of `entries`, decoded once (a malformed entry is logged and left out): only
 * entries after `after` and, with `seen`, not repeats of an event id `seen` holds (then
 * added to it).
 */
const decodeItems = (
  address: Address,
  stream: string,
  entries: ReadonlyArray<RawEntry>,
  binding: CursorBinding,
  seen?: RecentIds,
) =>
  Effect.gen(function* () {
    const items: Array<Item> = []
    for (const entry of entries) {
      const event = yield* decodeOrSkip(address, stream, entry, binding)
      if (event === undefined || seen?.repeat(event.id) === true) continue
      items.push({
        pos: entry.id,
        event,
        position: positionOf(entry),
        frontier: frontierOf(entry),
        at: Date.parse(event.time),
      })
    }
    return items
  })

/** The last `window` event ids seen, oldest dropped first: a repeat is an id still among them. */
class RecentIds {
  readonly #ids = new Set<string>()
  constructor(readonly window: number) {}
  /** True if `id` was seen; otherwise remembers it. */
  repeat(id: string): boolean {
    if (this.#ids.has(id)) return true
    this.#ids.add(id)
    if (this.#ids.size > this.window) this.#ids.delete(this.#ids.values().next().value!)
    return false
  }
}

/** Where a subscription starts, once its start position was checked. */
interface Start {
  /** Stream id to read after. */
  readonly start: StreamId
  /** The stream identity the start position belongs to (may be an identity the stream lost). */
  readonly identity: string
  /** The stream's identity now. */
  readonly current: string
  /**
   * An outbox cursor covering exactly what the subscription has delivered before its start
   * (the cursor's frontier, the outbox head of "now", "beginning"): where it re-reads the
   * outbox from if Redis loses the stream. `undefined` when there is none.
   */
  readonly frontier: string | undefined
  readonly keep?: ((position: string | undefined) => boolean) | undefined
  /** For an anchored ("now") cursor over an outbox: its anchor (the filter of which entries committed after it is shared, core `sharedAnchoredFilters`). */
  readonly anchor?: Anchor | undefined
  /** For "now": the head cursor it was resolved to (what the subscription reports as its start). */
  readonly head?: string
}

/** Builds the subscription side; the feeds live in the caller's (the layer's) scope. */
export const makeSubscribe = (
  main: Client,
  config: ResolvedOptions,
  store: Option.Option<OutboxReader["Service"]>,
): Effect.Effect<BrokerSubscribe, never, Scope.Scope> =>
  Effect.gen(function* () {
    const layerScope = yield* Effect.scope
    const identityOf = (keys: ChannelKeys, known?: string, rotate = false) =>
      retryTransient(streamIdentity(main, keys, known, rotate), "reading the stream identity")
    const positionOfStream = (stream: string) =>
      retryTransient(streamPosition(main, stream), "reading the stream position")

    /** The earliest start asked for by the subscriptions about to create an address's feed. */
    const wanted = new Map<string, Wanted>()
    /** The logs of the feeds that exist now (for `stats`). */
    const logs = new Map<string, FeedLog>()

    /**
     * The live feed of one address. Every read is followed, in the same round trip, by a
     * look at the stream's identity key and at whether the stream exists: when the identity
     * is gone or changed, or the stream vanished, the stream lost its data (a restart
     * without persistence, FLUSHALL, a DEL). The feed then says so (a loss page, and a
     * warning in the log), starts over at the beginning of the new stream, and every
     * subscription re-reads what it missed from the outbox. Detection takes at most one
     * read: the next entry appended, or `blockMs` when nothing is.
     */
    const feeds: RcMap.RcMap<string, Feed, BusError> = yield* RcMap.make({
      lookup: (key: string): Effect.Effect<Feed, BusError, Scope.Scope> =>
        Effect.gen(function* () {
          const address = addressOf(key)
          const keys = channelKeys(config.keyPrefix, address)
          const { stream } = keys
          const tag = addressTag(address)
          const conn = yield* ownedConnection(main, `${config.connectionName}-feed`)
          const losses = yield* connectionLosses(conn)
          const log = new FeedLog(defaultFeedWindow)
          const metas = new WeakMap<ReadonlyArray<DeliveredEvent>, PageMeta>()
          const seen = new RecentIds(defaultDedupeWindow)
          let identity = yield* identityOf(keys)
          const last = (yield* positionOfStream(stream)).last
          // Start where the first subscribers need it when that is recent: the subscriptions
          // of one burst (whose heads were read a moment before) then find their start in the
          // log and read nothing. A start further back (a replay) is left to that subscriber's
          // own catch-up, so live readers do not wait for it.
          const want = wanted.get(key)
          wanted.delete(key)
          let position =
            want !== undefined &&
            want.identity === identity &&
            compareStreamIds(want.id, last) < 0 &&
            idTime(want.id) >= Date.now() - feedStartWindowMs
              ? want.id
              : last
          const startAfter = { identity, id: position }
          let existed = false

          const append = (meta: PageMeta, events: ReadonlyArray<DeliveredEvent>) => {
            metas.set(events, meta)
            log.append(events)
          }
          /** The stream lost its data and has identity `next` now: a loss page, and the feed starts the new stream from its start. */
          const lose = (next: string) => {
            const lostFrom = identity
            identity = next
            position = "0-0"
            existed = false
            if (next === lostFrom) return
            append(
              {
                identity: next,
                from: "0-0",
                to: "0-0",
                items: [],
                minAt: Number.POSITIVE_INFINITY,
                lost: { from: lostFrom, to: next },
              },
              [],
            )
          }

          const readOnce = Effect.suspend(() =>
            readWithIdentity(
              "XREAD",
              conn,
              ["XREAD", "COUNT", config.pageSize, "BLOCK", config.blockMs, "STREAMS", stream, position],
              keys,
              config.blockMs + replyMarginMs,
            ),
          ).pipe(
            Effect.flatMap(({ reply, identity: now, exists }) =>
              Effect.gen(function* () {
                const vanished = existed && !exists
                if (now !== identity || vanished) {
                  // The entries of this read may be of the new stream or the last of the old
                  // one: subscriptions re-read both from the outbox, so none is appended.
                  const next = yield* identityOf(keys, identity, now === identity)
                  yield* Effect.logWarning(
                    `redis-streams: stream ${stream} lost its data (${vanished ? "the stream was deleted" : now === null ? "its identity key is gone: Redis restarted without persistence or was flushed" : "its identity changed"}; identity ${identity} → ${next}); the last entry this process read was ${position}; subscriptions re-read what they had not delivered from the outbox`,
                  )
                  lose(next)
                  return
                }
                existed = exists
                const entries = parseReadReply(reply)
                if (entries.length === 0) return
                const from = position
                position = entries[entries.length - 1]!.id
                const items = yield* decodeItems(address, stream, entries, { tag, identity }, seen)
                let minAt = Number.POSITIVE_INFINITY
                for (const item of items) if (item.at < minAt) minAt = item.at
                append(
                  { identity, from, to: position, items, minAt },
                  items.map((item) => item.event),
                )
              }),
            ),
          )
          /**
           * After a failed read (a failover, a restart), checks that the stream still reaches
           * the last entry this feed read. Replication is asynchronous: a replica promoted in
           * a failover may lack the newest entries of its master (with `minReplicas` 0, or when
           * a replica that had not acknowledged them was promoted). Their ids are gone while the
           * identity key survived; the stream's identity moves on here (once, whoever notices
           * first), so every reader treats it like any other loss and re-reads from the outbox.
           */
          const checkTail = Effect.gen(function* () {
            if (position === "0-0") return
            const at = yield* streamPosition(main, stream)
            // A stream that is gone entirely is the identity check's case (it reports it as such).
            if (at.last === "0-0" || compareStreamIds(at.last, position) >= 0) return
            const next = yield* streamIdentity(main, keys, identity, true)
            yield* Effect.logWarning(
              `redis-streams: stream ${stream} lost its newest entries (it ends at ${at.last}, this process had read up to ${position}: a failover to a replica that was behind); identity ${identity} → ${next}; subscriptions re-read what they had not delivered from the outbox`,
            )
            lose(next)
          })
          // One read per turn. Transient failures (a killed connection, a restarting server, a
          // failover) are retried on core's schedule from the same position; ioredis
          // reconnects underneath. A read the cluster client re-sent to the new master after a
          // failover does not fail: a dropped node connection counts as a failure here, and
          // the turn after a failure checks the stream's tail first.
          let failed = false
          let seenLosses = losses.count
          const turn = Effect.suspend(() => {
            const dropped = losses.count !== seenLosses
            seenLosses = losses.count
            return (failed || dropped ? Effect.andThen(checkTail, readOnce) : readOnce).pipe(
              Effect.tap(() =>
                Effect.sync(() => {
                  failed = false
                }),
              ),
              Effect.tapError(() =>
                Effect.sync(() => {
                  failed = true
                }),
              ),
            )
          })
          yield* Effect.forever(retryTransient(turn, `live read of ${stream}`)).pipe(
            // A feed that failed for good is not handed to later subscriptions: they start a
            // new one. Out of the map first, then the log ends, in one step.
            Effect.catch((error: BusError) =>
              Effect.uninterruptible(
                RcMap.invalidate(feeds, key).pipe(Effect.andThen(Effect.sync(() => log.fail(error)))),
              ),
            ),
            Effect.forkScoped,
          )

          const indexFor = (at: string, after: StreamId): number | undefined =>
            at !== identity
              ? undefined
              : indexAfter(
                  log,
                  compareStreamIds,
                  after,
                  position,
                  startAfter.identity === at ? startAfter.id : undefined,
                  (page) => {
                    const meta = metas.get(page)!
                    // Pages before a loss are of another stream.
                    return meta.lost !== undefined || meta.identity !== at ? undefined : meta
                  },
                )

          logs.set(key, log)
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              if (logs.get(key) === log) logs.delete(key)
            }),
          )
          return { log, meta: (page) => metas.get(page)!, identity: () => identity, indexFor } satisfies Feed
        }),
    })

    /** One catch-up page after `after`, with the identity of the stream it came from. */
    const readPage = (address: Address, keys: ChannelKeys, after: StreamId, seen: RecentIds) =>
      retryTransient(
        readWithIdentity(
          "XRANGE",
          main,
          ["XRANGE", keys.stream, `(${after}`, "+", "COUNT", config.pageSize],
          keys,
          replyMarginMs,
        ),
        `catching up on ${keys.stream}`,
      ).pipe(
        Effect.flatMap(({ reply, identity }) =>
          Effect.gen(function* () {
            // A missing identity key: the stream was lost a moment ago; take the new one.
            const current = identity ?? (yield* identityOf(keys))
            const entries = parseEntries(reply)
            const items = yield* decodeItems(
              address,
              keys.stream,
              entries,
              { tag: addressTag(address), identity: current },
              seen,
            )
            return { identity: current, items, last: entries.at(-1)?.id }
          }),
        ),
      )

    const outboxHead = outboxHeads(layerScope, store, "redis-streams", "inFlight")
    /** The anchored filter of each "now" cursor in use, shared by its subscriptions (core). */
    const headFilters = Option.isSome(store)
      ? sharedAnchoredFilters(store.value, config.pageSize, "redis-streams")
      : undefined

    /**
     * The cursor "now" means: the stream's last id and, with an outbox at hand, an anchor
     * (the outbox head and the time it was read), so that a subscription from it can leave
     * out events committed before it that the relay had not sent yet.
     *
     * The stream's position is read by each call, at once: the read is on the wire before
     * the fiber first waits, so before any send the caller makes afterwards (a read shared
     * with later callers would be older than their calls and miss what landed in between).
     * It costs Redis one script call. The outbox head, which costs a pooled connection of
     * the outbox, is read at once by the first call and shared by the calls made until it
     * answers (core `outboxHeads`): a thousand subscriptions from "now" started together no
     * longer exhaust the outbox's pool.
     */
    const head = (request: Address): Effect.Effect<string, BusError> =>
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const keys = channelKeys(config.keyPrefix, address)
        const { stream } = keys
        const [last, identity, anchor] = yield* Effect.all(
          [
            Effect.map(positionOfStream(stream), (p) => p.last),
            identityOf(keys),
            outboxHead === undefined
              ? Effect.undefined
              : outboxHead(address).pipe(
                  Effect.catch((error: BusError) =>
                    Effect.logWarning(
                      `redis-streams: no outbox head for "now" on ${stream}; events the relay has not sent yet may be delivered`,
                      error.message,
                    ).pipe(Effect.as(undefined)),
                  ),
                ),
          ],
          { concurrency: "unbounded" },
        )
        const binding: CursorBinding = { tag: addressTag(address), identity }
        return anchor !== undefined
          ? toHeadCursor(last, binding, anchor.at, anchor.outboxHead)
          : toCursor(last, binding)
      })

    /**
     * Checks a start position and says where to start: the checks `ready` waits for (a
     * cursor of another address, of a stream that is gone with no way to recover, or
     * trimmed past) and the state a subscription starts with.
     */
    const resolveStart = (address: Address, from: string): Effect.Effect<Start, BusError> =>
      Effect.gen(function* () {
        const keys = channelKeys(config.keyPrefix, address)
        const { stream } = keys
        if (from === "beginning") {
          const current = yield* identityOf(keys)
          return {
            start: "0-0",
            identity: current,
            current,
            frontier: Option.isSome(store) ? "beginning" : undefined,
          }
        }
        // After a flip: an outbox cursor (or another broker's cursor with its outbox
        // frontier). The stream holds every event the relay forwarded, each with its outbox
        // position: read it from the start and skip exactly what the cursor covers.
        const headCursor = from === "now" ? yield* head(address) : undefined
        const parsed = parseCursor(headCursor ?? from)
        const outboxCursor = parsed instanceof CursorInvalid ? outboxCursorOf(store, from) : undefined
        if (outboxCursor !== undefined && Option.isSome(store)) {
          const position = yield* positionOfStream(stream)
          if (position.trimmed || position.maxDeleted !== "0-0") {
            return yield* flipCursorExpired(from, `stream ${stream}`)
          }
          const current = yield* identityOf(keys)
          return {
            start: "0-0",
            identity: current,
            current,
            frontier: outboxCursor,
            keep: notCoveredBy(store.value, outboxCursor),
          }
        }
        if (parsed instanceof CursorInvalid) return yield* parsed
        if (parsed.binding !== undefined && parsed.binding.tag !== addressTag(address)) {
          return yield* new CursorInvalid({
            cursor: from,
            reason: "address",
            message: `cursor ${JSON.stringify(from)} belongs to another tenant or channel than ${address.tenant}/${address.channel}; resuming from it would skip events (store one cursor per stream)`,
          })
        }
        const current = yield* identityOf(keys)
        const frontier =
          parsed.frontier ??
          (parsed.anchor !== undefined && Option.isSome(store) ? parsed.anchor.outboxHead : undefined)
        const anchor: Anchor | undefined =
          parsed.anchor !== undefined && Option.isSome(store)
            ? { at: parsed.anchor.startedAt, outboxHead: parsed.anchor.outboxHead }
            : undefined
        if (parsed.binding !== undefined && parsed.binding.identity !== current) {
          // The stream this cursor was read from is gone. With the outbox frontier the cursor
          // carries, the subscription re-reads what came after it from the outbox and goes on
          // with the new stream; without one nothing can say what was lost: an explicit reset.
          if (frontier === undefined || Option.isNone(store)) {
            return yield* new CursorInvalid({
              cursor: from,
              reason: "expired",
              message: `cursor ${JSON.stringify(from)} points into a stream ${stream} that Redis lost (identity ${parsed.binding.identity}, now ${current}: restarted without persistence, or flushed), and it carries no outbox position to recover from; resume from "beginning" or "now"`,
            })
          }
          return { start: "0-0", identity: parsed.binding.identity, current, frontier, anchor }
        }
        if (from !== "now") {
          const position = yield* positionOfStream(stream)
          if (entriesLostAfter(position, parsed.id)) {
            return yield* new CursorInvalid({
              cursor: from,
              reason: "expired",
              message: `entries after cursor ${from} were trimmed from ${stream} (MAXLEN); resume from "beginning" or "now", or recover from the outbox`,
            })
          }
        }
        return {
          start: parsed.id,
          identity: current,
          current,
          frontier,
          anchor,
          ...(headCursor !== undefined ? { head: headCursor } : {}),
        }
      })

    const checkStart = (request: Address, from: string): Effect.Effect<void, BusError> =>
      checkAddress(request).pipe(
        Effect.flatMap((address) => resolveStart(address, from)),
        Effect.asVoid,
      )

    /**
     * A subscriber's place in the address's feed after `from` (see the module comment): what
     * it delivered is a stream identity and entry id; it is in the feed's log at `index`, or
     * reads the stream up to the log first, or re-reads the outbox after a loss. Its filters
     * (an outbox cursor's after a flip, an anchored "now" cursor's) apply per page, or per
     * item only where the page needs it.
     */
    const openCursor: OpenFeedCursor = (request, from) =>
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const keys = channelKeys(config.keyPrefix, address)
        const { stream } = keys
        const key = keyOf(address)
        const s = yield* resolveStart(address, from)
        // Join the feed before reading anything: nothing appended meanwhile is missed.
        const earliest = wanted.get(key)
        if (
          earliest === undefined ||
          (earliest.identity === s.identity && compareStreamIds(s.start, earliest.id) < 0)
        )
          wanted.set(key, { identity: s.identity, id: s.start })
        const feed = yield* RcMap.get(feeds, key)
        // Read by the lookup that made the feed; a feed that already existed leaves it here.
        wanted.delete(key)

        // What the subscription has delivered: the stream identity, and its entry id and
        // filters (core's gate); the outbox frontier of its last event is where it re-reads
        // the outbox from after a loss (`frontierBase` until it delivered one).
        let identity = s.identity
        const filter =
          s.anchor !== undefined && headFilters !== undefined
            ? yield* headFilters(address, s.anchor)
            : undefined
        const gate = new PositionGate<StreamId, Item>(compareStreamIds, s.start, s.keep, filter)
        let frontierBase = s.frontier
        // An event relayed without its outbox frontier (sent by hand) leaves the subscription
        // unable to say what it delivered: a later loss is then a reset.
        const frontier = () => (gate.lastItem !== undefined ? gate.lastItem.frontier : frontierBase)
        /** Its place in the log. */
        const place: LogPlace = { index: -1, ended: undefined }
        /** A re-read of the outbox after a loss, to the stream of identity `to`. */
        let recovering:
          | { readonly to: string; after: string; read: number; readonly startedAt: number }
          | undefined
        /** Event ids of a catch-up read (a re-sent event has an entry of its own); dropped on joining the log. */
        let catchUpSeen: RecentIds | undefined

        /** Starts the re-read of the outbox after the stream lost its data (identity `to` now). */
        const lost = (to: string): Effect.Effect<void, BusError> =>
          Option.isNone(store) || frontier() === undefined
            ? Effect.fail(
                new CursorInvalid({
                  cursor: from,
                  reason: "expired",
                  message: `Redis lost stream ${stream} (identity ${identity} → ${to}: restarted without persistence, or flushed) and this subscription cannot tell what it missed (${Option.isNone(store) ? "no outbox at hand" : "its last event carried no outbox position"}); resume from "beginning" or "now"`,
                }),
              )
            : Effect.sync(() => {
                recovering = { to, after: frontier()!, read: 0, startedAt: Date.now() }
              })

        /** One page of the outbox re-read; at its end the subscription goes on with the new stream from its start. */
        const recoverPage = Effect.gen(function* () {
          const r = recovering!
          const outbox = (store as Option.Some<OutboxReader["Service"]>).value
          const page = yield* retryTransient(
            outbox.read(address, r.after, config.pageSize),
            "re-reading the outbox",
          )
          r.read += page.events.length
          r.after = page.next
          if (!page.more) {
            yield* Effect.logWarning(
              `redis-streams: subscription of ${stream} recovered from the loss (identity ${identity} → ${r.to}): ${r.read} event(s) after its last one re-read from the outbox in ${Date.now() - r.startedAt} ms`,
            )
            identity = r.to
            gate.last = "0-0"
            gate.keep = notCoveredBy(outbox, page.next)
            gate.lastItem = undefined
            frontierBase = page.next
            recovering = undefined
          }
          if (filter === undefined) return page.events
          const out: Array<DeliveredEvent> = []
          for (const e of page.events)
            if (filter.now(e.id, Date.parse(e.time)) === true || (yield* filter.later(e.id))) out.push(e)
          return out
        })

        const poll = (): FeedPage | "wait" | "step" => {
          if (
            place.index < 0 ||
            gate.held !== undefined ||
            place.ended !== undefined ||
            recovering !== undefined
          )
            return "step"
          return pollLog(feed.log, place, (events) => {
            const meta = feed.meta(events)
            if (meta.lost !== undefined) {
              if (meta.lost.from !== identity) return undefined
              // The stream lost its data under this subscription: `step` re-reads the outbox.
              place.index = -1
              return "step"
            }
            // Entries of another stream (the old one's, queued before the feed noticed its loss).
            if (meta.identity !== identity) return undefined
            const out = gate.page(meta, events)
            return out.length === 0 && gate.held !== undefined ? "step" : out
          })
        }

        const step: Effect.Effect<FeedPage | undefined, BusError> = Effect.suspend(() =>
          Effect.gen(function* () {
            if (gate.held !== undefined) {
              const events = yield* gate.admitHeld
              return events.length > 0 ? { events, live: place.index >= 0 } : undefined
            }
            if (place.ended !== undefined) return yield* Effect.fail(place.ended)
            if (recovering !== undefined) {
              const events = yield* recoverPage
              return events.length > 0 ? { events, live: false } : undefined
            }
            if (feed.log.failure !== undefined) return yield* Effect.fail(feed.log.failure)
            // A loss the log shows no more (or that happened before this subscription joined).
            if (identity !== feed.identity() && place.index < 0) {
              yield* lost(feed.identity())
              return undefined
            }
            // In the log from `last` on: no read. Otherwise read a page of the stream after
            // `last`, then look again (the log has moved on meanwhile).
            const end = feed.log.end
            const at = feed.indexFor(identity, gate.last)
            if (at !== undefined) {
              place.index = at
              catchUpSeen = undefined
              return undefined
            }
            catchUpSeen ??= new RecentIds(defaultDedupeWindow)
            const page = yield* readPage(address, keys, gate.last, catchUpSeen)
            if (page.identity !== identity) {
              // A stream that replaced the one this subscription read from.
              yield* lost(page.identity)
              return undefined
            }
            if (page.last === undefined) {
              // Nothing after `last` in the stream: whatever comes next, the feed appends after
              // the log's end as it was before this read.
              place.index = end
              catchUpSeen = undefined
              return undefined
            }
            const events = gate.admit(page.items)
            if (gate.held === undefined && compareStreamIds(page.last, gate.last) > 0) gate.last = page.last
            return events.length > 0 ? { events, live: false } : undefined
          }),
        )

        return {
          start: s.head ?? from,
          poll,
          step,
          onAppend: (wake: () => void) => feed.log.onAppend(wake),
        } satisfies FeedCursor
      })

    const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
      feedStream(openCursor(request, request.from ?? "now"))

    const stats = () => feedLogStats(logs)

    return { head, checkStart, subscribe, openCursor, stats }
  })
