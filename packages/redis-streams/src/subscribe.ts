import {
  type Address,
  type BusError,
  CursorInvalid,
  checkAddress,
  type DeliveredEvent,
  dedupeById,
  flipCursorExpired,
  notCoveredBy,
  type OutboxStore,
  outboxCursorOf,
  type SubscribeRequest,
} from "@bus/core"
import { Effect, Option, PubSub, RcMap, type Scope, Stream } from "effect"
import type { Redis } from "ioredis"
import { decodeOrSkip, positionOf } from "./codec.js"
import {
  command,
  ownedConnection,
  parseEntries,
  parseReadReply,
  type RawEntry,
  retryTransient,
  runScript,
  transientDelay,
} from "./connection.js"
import { channelKeys, compareStreamIds, parseCursor, type StreamId, toCursor, toHeadCursor } from "./keys.js"
import type { ResolvedOptions } from "./options.js"
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

/** An entry read from a stream: its id, its event unless it was malformed, and its outbox position. */
interface Item {
  readonly id: StreamId
  readonly event: DeliveredEvent | undefined
  readonly position: string | undefined
}

type FeedMessage = ReadonlyArray<Item> | BusError

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
export const streamPosition = (main: Redis, stream: string): Effect.Effect<StreamPosition, BusError> =>
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

const decodeAll = (address: Address, stream: string, entries: ReadonlyArray<RawEntry>) =>
  Effect.forEach(entries, (entry) =>
    decodeOrSkip(address, stream, entry).pipe(
      Effect.map((event): Item => ({ id: entry.id, event, position: positionOf(entry) })),
    ),
  )

/** The outbox and its head cursor when a "now" subscription started. */
interface OutboxHead {
  readonly store: OutboxStore["Service"]
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

/** Builds the subscribe function; the feeds live in the caller's (the layer's) scope. */
export const makeSubscribe = (
  main: Redis,
  config: ResolvedOptions,
  store: Option.Option<OutboxStore["Service"]>,
): Effect.Effect<
  {
    readonly head: (address: Address) => Effect.Effect<string, BusError>
    readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
  },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    const feeds = yield* RcMap.make({
      lookup: (key: string) =>
        Effect.gen(function* () {
          const address = addressOf(key)
          const { stream } = channelKeys(config.keyPrefix, address)
          const conn = yield* ownedConnection(main, `${config.connectionName}-feed`)
          const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<FeedMessage>(), PubSub.shutdown)
          let position = (yield* retryTransient(streamPosition(main, stream), "reading the stream position"))
            .last
          const read = command("XREAD", () =>
            conn.call(
              "XREAD",
              "COUNT",
              config.pageSize,
              "BLOCK",
              config.blockMs,
              "STREAMS",
              stream,
              position,
            ),
          ).pipe(
            Effect.flatMap((reply) => {
              const entries = parseReadReply(reply)
              if (entries.length === 0) return Effect.void
              position = entries[entries.length - 1]!.id
              return decodeAll(address, stream, entries).pipe(
                Effect.flatMap((items) => PubSub.publish(pubsub, items)),
              )
            }),
          )
          // Transient failures (a killed connection, a restarting server) are retried for
          // ever from the same position; ioredis reconnects underneath.
          yield* Effect.gen(function* () {
            let failures = 0
            for (;;) {
              const error = yield* read.pipe(
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

    const readPage = (address: Address, stream: string, after: StreamId) =>
      retryTransient(
        command("XRANGE", () => main.call("XRANGE", stream, `(${after}`, "+", "COUNT", config.pageSize)),
        `catching up on ${stream}`,
      ).pipe(Effect.flatMap((reply) => decodeAll(address, stream, parseEntries(reply))))

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
        const { stream } = channelKeys(config.keyPrefix, address)
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
        return Option.isSome(outboxHead) ? toHeadCursor(last, startedAt, outboxHead.value) : toCursor(last)
      })

    const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
      Stream.unwrap(
        Effect.gen(function* () {
          const address = yield* checkAddress(request)
          const { stream } = channelKeys(config.keyPrefix, address)
          const from = request.from ?? "now"
          let start: StreamId
          let nowFilter: ((event: DeliveredEvent) => Effect.Effect<boolean>) | undefined
          let keep: ((position: string | undefined) => boolean) | undefined
          // After a flip: an outbox cursor (or another broker's cursor with its outbox
          // frontier). The stream holds every event the relay forwarded, each with its outbox
          // position: read it from the start and skip exactly what the cursor covers.
          const outboxCursor =
            from === "now" || from === "beginning" || !(parseCursor(from) instanceof CursorInvalid)
              ? undefined
              : outboxCursorOf(store, from)
          if (from === "beginning") start = "0-0"
          else if (outboxCursor !== undefined && Option.isSome(store)) {
            const position = yield* retryTransient(
              streamPosition(main, stream),
              "reading the stream position",
            )
            if (position.trimmed || position.maxDeleted !== "0-0") {
              return yield* flipCursorExpired(from, `stream ${stream}`)
            }
            start = "0-0"
            keep = notCoveredBy(store.value, outboxCursor)
          } else {
            const cursor = from === "now" ? yield* head(address) : from
            const parsed = parseCursor(cursor)
            if (parsed instanceof CursorInvalid) return yield* parsed
            if (from !== "now") {
              const position = yield* retryTransient(
                streamPosition(main, stream),
                "reading the stream position",
              )
              if (entriesLostAfter(position, parsed.id)) {
                return yield* new CursorInvalid({
                  cursor: from,
                  reason: "expired",
                  message: `entries after cursor ${from} were trimmed from ${stream} (MAXLEN); resume from "beginning" or "now", or recover from the outbox`,
                })
              }
            }
            start = parsed.id
            if (parsed.anchor !== undefined && Option.isSome(store)) {
              nowFilter = committedAfter(
                address,
                { store: store.value, cursor: parsed.anchor.outboxHead },
                parsed.anchor.startedAt,
                config.pageSize,
              )
            }
          }
          const feed = yield* RcMap.get(feeds, keyOf(address))
          // Join the live feed before catching up, so nothing appended in between is missed.
          const subscription = yield* PubSub.subscribe(feed.pubsub)
          const catchUp = Stream.paginate(start, (after) =>
            readPage(address, stream, after).pipe(
              Effect.map(
                (items) =>
                  [
                    items,
                    items.length >= config.pageSize
                      ? Option.some(items[items.length - 1]!.id)
                      : Option.none(),
                  ] as const,
              ),
            ),
          )
          const live = Stream.fromSubscription(subscription).pipe(
            Stream.mapEffect((message) =>
              Array.isArray(message)
                ? Effect.succeed(message as ReadonlyArray<Item>)
                : Effect.fail(message as BusError),
            ),
            Stream.flattenIterable,
          )
          let last = start
          const events = Stream.concat(catchUp, live).pipe(
            Stream.filter((item) => {
              if (compareStreamIds(item.id, last) <= 0) return false
              last = item.id
              return item.event !== undefined && (keep === undefined || keep(item.position))
            }),
            Stream.map((item) => item.event!),
          )
          return (nowFilter === undefined ? events : Stream.filterEffect(events, nowFilter)).pipe(
            // A re-sent event (after the dedupe TTL, or a recovery after data loss) gets a
            // new entry; a subscription delivers each event id once.
            dedupeById(),
          )
        }),
      )

    return { head, subscribe }
  })
