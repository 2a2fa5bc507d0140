import { type BusError, CursorInvalid, type DeliveredEvent } from "@bus/core"
import {
  type Address,
  addressTag,
  checkAddress,
  dedupeById,
  flipCursorExpired,
  notCoveredBy,
  type OutboxReader,
  outboxCursorOf,
  type SubscribeRequest,
} from "@bus/core/adapter"
import { Effect, Option, PubSub, RcMap, type Scope, Stream } from "effect"
import { decodeOrSkip, frontierOf, positionOf } from "./codec.js"
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
  transientDelay,
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
} from "./keys.js"
import type { ResolvedOptions } from "./options.js"
import { streamIdentity } from "./recovery.js"
import { positionScript } from "./scripts.js"

/**
 * Subscriptions: one shared *feed* per tenant channel and process reads the stream live
 * with `XREAD BLOCK` on a connection of its own and fans entries out in memory, so a
 * hundred subscribers of one channel cost one blocking connection, not a hundred. A new
 * subscriber joins the feed first, then catches up from its own cursor with `XRANGE` on
 * the shared connection; entries seen on both paths are dropped by stream id (ids only
 * grow), so the hand-over has no gap and no duplicate.
 *
 * @module
 */

/** An entry read from a stream: its id, its event unless it was malformed, and its outbox position and frontier. */
interface Item {
  readonly id: StreamId
  readonly event: DeliveredEvent | undefined
  readonly position: string | undefined
  readonly frontier: string | undefined
}

/** Entries read from the stream while it had identity `identity`. */
interface Batch {
  readonly identity: string
  readonly items: ReadonlyArray<Item>
}

/** The feed saw the stream lose its data: its identity went from `from` to `to`. */
interface Lost {
  readonly lost: { readonly from: string; readonly to: string }
}

type FeedMessage = Batch | Lost | BusError

const keyOf = (a: Address): string => `${a.tenant}\u0000${a.channel}`
const addressOf = (key: string): Address => {
  const [tenant = "", channel = ""] = key.split("\u0000")
  return { tenant, channel }
}

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

const decodeAll = (
  address: Address,
  stream: string,
  entries: ReadonlyArray<RawEntry>,
  binding: CursorBinding,
) =>
  Effect.forEach(entries, (entry) =>
    decodeOrSkip(address, stream, entry, binding).pipe(
      Effect.map(
        (event): Item => ({
          id: entry.id,
          event,
          position: positionOf(entry),
          frontier: frontierOf(entry),
        }),
      ),
    ),
  )

/** The outbox and its head cursor when a "now" subscription started. */
interface OutboxHead {
  readonly store: OutboxReader["Service"]
  readonly cursor: string
}

/**
 * "now" on a relayed transport: the stream position when the subscription started is not
 * enough, because events committed just before may still be on their way through the
 * relay. An event the stream delivers after that position is kept when it was published
 * after the subscription started (its `time`), and otherwise only when the outbox read
 * after the head taken at the start holds it, i.e. it committed after the start. The
 * outbox is read only for such early-published events (a relay's backlog, or a
 * transaction that was open across the start), from where the last check stopped.
 * A producer clock ahead of this one can let an event committed just before the start
 * through; nothing committed after the start is dropped.
 */
const committedAfter = (
  address: Address,
  head: OutboxHead,
  startedAt: number,
  pageSize: number,
): ((event: DeliveredEvent) => Effect.Effect<boolean>) => {
  let cursor = head.cursor
  /** Ids of early-published events found in the outbox after the head and not yet delivered. */
  const after = new Set<string>()
  const scan = Effect.gen(function* () {
    for (;;) {
      const page = yield* retryTransient(head.store.read(address, cursor, pageSize), "reading the outbox")
      for (const e of page.events) if (!(Date.parse(e.time) > startedAt)) after.add(e.id)
      cursor = page.next
      if (!page.more) return
    }
  })
  return (event) =>
    Effect.suspend(() => {
      if (Date.parse(event.time) > startedAt || after.delete(event.id)) return Effect.succeed(true)
      return scan.pipe(
        Effect.map(() => after.delete(event.id)),
        // The outbox cannot tell (a pruned head, an error): deliver rather than risk a loss.
        Effect.catch(() => Effect.succeed(true)),
      )
    })
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
  readonly nowFilter?: ((event: DeliveredEvent) => Effect.Effect<boolean>) | undefined
}

/** Builds the subscribe function; the feeds live in the caller's (the layer's) scope. */
export const makeSubscribe = (
  main: Client,
  config: ResolvedOptions,
  store: Option.Option<OutboxReader["Service"]>,
): Effect.Effect<
  {
    readonly head: (address: Address) => Effect.Effect<string, BusError>
    readonly checkStart: (address: Address, from: string) => Effect.Effect<void, BusError>
    readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
  },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const identityOf = (keys: ChannelKeys, known?: string, rotate = false) =>
      retryTransient(streamIdentity(main, keys, known, rotate), "reading the stream identity")

    /**
     * The live feed of one address. Every read is followed, in the same round trip, by a
     * look at the stream's identity key and at whether the stream exists: when the identity
     * is gone or changed, or the stream vanished, the stream lost its data (a restart
     * without persistence, FLUSHALL, a DEL). The feed then says so (a `Lost` message, and a
     * warning in the log), starts over at the beginning of the new stream, and every
     * subscription re-reads what it missed from the outbox. Detection takes at most one
     * read: the next entry appended, or `blockMs` when nothing is.
     */
    const feeds = yield* RcMap.make({
      lookup: (key: string) =>
        Effect.gen(function* () {
          const address = addressOf(key)
          const keys = channelKeys(config.keyPrefix, address)
          const { stream } = keys
          const tag = addressTag(address)
          const conn = yield* ownedConnection(main, `${config.connectionName}-feed`)
          const losses = yield* connectionLosses(conn)
          const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<FeedMessage>(), PubSub.shutdown)
          let identity = yield* identityOf(keys)
          let position = (yield* retryTransient(streamPosition(main, stream), "reading the stream position"))
            .last
          let existed = false
          const readOnce = Effect.suspend(() =>
            readWithIdentity(
              "XREAD",
              conn,
              ["XREAD", "COUNT", config.pageSize, "BLOCK", config.blockMs, "STREAMS", stream, position],
              keys,
              config.blockMs + replyMarginMs,
            ),
          ).pipe(
            Effect.flatMap(({ reply, identity: seen, exists }) =>
              Effect.gen(function* () {
                const vanished = existed && !exists
                if (seen !== identity || vanished) {
                  // The entries of this read may be of the new stream or the last of the old
                  // one: subscriptions re-read both from the outbox, so none is published.
                  const next = yield* identityOf(keys, identity, seen === identity)
                  const from = identity
                  yield* Effect.logWarning(
                    `redis-streams: stream ${stream} lost its data (${vanished ? "the stream was deleted" : seen === null ? "its identity key is gone: Redis restarted without persistence or was flushed" : "its identity changed"}; identity ${from} → ${next}); the last entry this process read was ${position}; subscriptions re-read what they had not delivered from the outbox`,
                  )
                  identity = next
                  position = "0-0"
                  existed = false
                  yield* PubSub.publish(pubsub, { lost: { from, to: next } })
                  return
                }
                existed = exists
                const entries = parseReadReply(reply)
                if (entries.length === 0) return
                position = entries[entries.length - 1]!.id
                const items = yield* decodeAll(address, stream, entries, { tag, identity })
                yield* PubSub.publish(pubsub, { identity, items })
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
            const from = identity
            yield* Effect.logWarning(
              `redis-streams: stream ${stream} lost its newest entries (it ends at ${at.last}, this process had read up to ${position}: a failover to a replica that was behind); identity ${from} → ${next}; subscriptions re-read what they had not delivered from the outbox`,
            )
            identity = next
            position = "0-0"
            existed = false
            if (next !== from) yield* PubSub.publish(pubsub, { lost: { from, to: next } })
          })
          // Transient failures (a killed connection, a restarting server, a failover) are
          // retried for ever from the same position; ioredis reconnects underneath.
          yield* Effect.gen(function* () {
            let failures = 0
            let seenLosses = losses.count
            for (;;) {
              // A read the cluster client re-sent to the new master after a failover does not
              // fail: a dropped node connection counts as a failure here.
              const dropped = losses.count !== seenLosses
              seenLosses = losses.count
              const error = yield* (
                failures > 0 || dropped ? Effect.andThen(checkTail, readOnce) : readOnce
              ).pipe(
                Effect.as(undefined),
                Effect.catch((e: BusError) => Effect.succeed(e)),
              )
              if (error === undefined) {
                failures = 0
                continue
              }
              if (!error.retryable) return yield* Effect.fail(error)
              failures++
              if (failures === 1 || failures % 20 === 0) {
                yield* Effect.logWarning(
                  `redis-streams: live read of ${stream} failed; retrying`,
                  error.message,
                )
              }
              yield* Effect.sleep(transientDelay(failures))
            }
          }).pipe(
            Effect.catch((error: BusError) => PubSub.publish(pubsub, error)),
            Effect.forkScoped,
          )
          return { pubsub }
        }),
    })

    /** One catch-up page after `after`, with the identity of the stream it came from. */
    const readPage = (address: Address, keys: ChannelKeys, after: StreamId) =>
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
            const items = yield* decodeAll(address, keys.stream, parseEntries(reply), {
              tag: addressTag(address),
              identity: current,
            })
            return { identity: current, items } satisfies Batch
          }),
        ),
      )

    /**
     * The cursor "now" means: the stream's last id and, with an outbox at hand, the time
     * and the outbox head, so that a subscription from it can leave out events committed
     * before it that the relay had not sent yet. Everything up to the position read runs
     * before a subscribe() call returns (fibers start synchronously up to their first
     * wait): the time, the outbox head when the outbox answers at once, and the position
     * read is on the wire before any send the caller makes afterwards.
     */
    const head = (request: Address): Effect.Effect<string, BusError> =>
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const keys = channelKeys(config.keyPrefix, address)
        const { stream } = keys
        const startedAt = Date.now()
        const outboxHead = yield* Option.match(store, {
          onNone: () => Effect.succeed(Option.none<string>()),
          onSome: (s) =>
            retryTransient(s.head(address), "reading the outbox head").pipe(
              Effect.map(Option.some),
              Effect.catch((error: BusError) =>
                Effect.logWarning(
                  `redis-streams: no outbox head for "now" on ${stream}; events the relay has not sent yet may be delivered`,
                  error.message,
                ).pipe(Effect.as(Option.none<string>())),
              ),
            ),
        })
        const last = (yield* retryTransient(streamPosition(main, stream), "reading the stream position")).last
        const binding: CursorBinding = { tag: addressTag(address), identity: yield* identityOf(keys) }
        return Option.isSome(outboxHead)
          ? toHeadCursor(last, binding, startedAt, outboxHead.value)
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
        const parsed = from === "now" ? parseCursor(yield* head(address)) : parseCursor(from)
        const outboxCursor = parsed instanceof CursorInvalid ? outboxCursorOf(store, from) : undefined
        if (outboxCursor !== undefined && Option.isSome(store)) {
          const position = yield* retryTransient(streamPosition(main, stream), "reading the stream position")
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
        const nowFilter =
          parsed.anchor !== undefined && Option.isSome(store)
            ? committedAfter(
                address,
                { store: store.value, cursor: parsed.anchor.outboxHead },
                parsed.anchor.startedAt,
                config.pageSize,
              )
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
          return { start: "0-0", identity: parsed.binding.identity, current, frontier, nowFilter }
        }
        if (from !== "now") {
          const position = yield* retryTransient(streamPosition(main, stream), "reading the stream position")
          if (entriesLostAfter(position, parsed.id)) {
            return yield* new CursorInvalid({
              cursor: from,
              reason: "expired",
              message: `entries after cursor ${from} were trimmed from ${stream} (MAXLEN); resume from "beginning" or "now", or recover from the outbox`,
            })
          }
        }
        return { start: parsed.id, identity: current, current, frontier, nowFilter }
      })

    const checkStart = (request: Address, from: string): Effect.Effect<void, BusError> =>
      checkAddress(request).pipe(
        Effect.flatMap((address) => resolveStart(address, from)),
        Effect.asVoid,
      )

    const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
      Stream.unwrap(
        Effect.gen(function* () {
          const address = yield* checkAddress(request)
          const keys = channelKeys(config.keyPrefix, address)
          const { stream } = keys
          const from = request.from ?? "now"
          const s = yield* resolveStart(address, from)
          const feed = yield* RcMap.get(feeds, keyOf(address))
          // Join the live feed before catching up, so nothing appended in between is missed.
          const subscription = yield* PubSub.subscribe(feed.pubsub)

          // What the subscription has delivered: the stream identity and entry id, and the
          // outbox frontier of its last event (where it re-reads from after a loss).
          let identity = s.identity
          let last = s.start
          let frontier = s.frontier
          let keep = s.keep

          const accept = (items: ReadonlyArray<Item>): Array<DeliveredEvent> => {
            const out: Array<DeliveredEvent> = []
            for (const item of items) {
              if (compareStreamIds(item.id, last) <= 0) continue
              last = item.id
              if (item.event === undefined || (keep !== undefined && !keep(item.position))) continue
              // An event relayed without its outbox frontier (sent by hand) leaves the
              // subscription unable to say what it delivered: a later loss is then a reset.
              frontier = item.frontier
              out.push(item.event)
            }
            return out
          }

          /**
           * The stream lost its data and now has identity `to`: delivers the events after the
           * last delivered one from the outbox, up to its head, then goes on with the new
           * stream from its start, skipping what the outbox read covered.
           */
          const recover = (to: string): Stream.Stream<DeliveredEvent, BusError> =>
            Stream.unwrap(
              Effect.gen(function* () {
                const from_ = frontier
                if (Option.isNone(store) || from_ === undefined) {
                  return yield* new CursorInvalid({
                    cursor: from,
                    reason: "expired",
                    message: `Redis lost stream ${stream} (identity ${identity} → ${to}: restarted without persistence, or flushed) and this subscription cannot tell what it missed (${Option.isNone(store) ? "no outbox at hand" : "its last event carried no outbox position"}); resume from "beginning" or "now"`,
                  })
                }
                const outbox = store.value
                const startedAt = Date.now()
                let read = 0
                return Stream.paginate(from_, (after) =>
                  retryTransient(outbox.read(address, after, config.pageSize), "re-reading the outbox").pipe(
                    Effect.flatMap((page) =>
                      Effect.gen(function* () {
                        read += page.events.length
                        if (!page.more) {
                          yield* Effect.logWarning(
                            `redis-streams: subscription of ${stream} recovered from the loss (identity ${identity} → ${to}): ${read} event(s) after its last one re-read from the outbox in ${Date.now() - startedAt} ms`,
                          )
                          identity = to
                          last = "0-0"
                          keep = notCoveredBy(outbox, page.next)
                          frontier = page.next
                        }
                        return [page.events, page.more ? Option.some(page.next) : Option.none()] as const
                      }),
                    ),
                  ),
                )
              }),
            )

          // Decided when the batch's turn comes (Stream.suspend), after a recovery before it
          // has moved the subscription to the new stream.
          const onBatch = (
            batch: Batch | Lost,
            catchingUp: boolean,
          ): Stream.Stream<DeliveredEvent, BusError> =>
            Stream.suspend(() => {
              if ("lost" in batch) return batch.lost.from === identity ? recover(batch.lost.to) : Stream.empty
              if (batch.identity === identity) return Stream.fromIterable(accept(batch.items))
              // A catch-up page of a stream that replaced the one this subscription read from.
              // Live entries of another identity are the old stream's, queued before the feed
              // noticed the loss: the outbox read covered them.
              if (catchingUp)
                return Stream.concat(
                  recover(batch.identity),
                  Stream.suspend(() => Stream.fromIterable(accept(batch.items))),
                )
              return Stream.empty
            })

          const catchUp = Stream.paginate(s.start, (after) =>
            readPage(address, keys, after).pipe(
              Effect.map(
                (batch) =>
                  [
                    [batch],
                    batch.items.length >= config.pageSize
                      ? Option.some(batch.items[batch.items.length - 1]!.id)
                      : Option.none(),
                  ] as const,
              ),
            ),
          ).pipe(Stream.flatMap((batch) => onBatch(batch, true)))
          const live = Stream.fromSubscription(subscription).pipe(
            Stream.mapEffect((message) =>
              "items" in message || "lost" in message
                ? Effect.succeed(message as Batch | Lost)
                : Effect.fail(message as BusError),
            ),
            Stream.flatMap((batch) => onBatch(batch, false)),
          )
          const events = Stream.concat(catchUp, live)
          return (s.nowFilter === undefined ? events : Stream.filterEffect(events, s.nowFilter)).pipe(
            // A re-sent event (after the dedupe TTL, or a recovery after data loss) gets a
            // new entry; a subscription delivers each event id once.
            dedupeById(),
          )
        }),
      )

    return { head, checkStart, subscribe }
  })
