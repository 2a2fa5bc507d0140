import { type Cause, Deferred, Effect, Layer, Metric, Option, Queue, RcMap, Stream } from "effect"
import { cappedBackoff } from "../bus/backoff.js"
import { capabilities as makeCapabilities, type TransportCapabilities } from "../contracts/capabilities.js"
import {
  type Address,
  DeadLetterStore,
  GroupStore,
  OutboxReader,
  replayedHeader,
} from "../contracts/outboxStore.js"
import { type Delivery, type GroupRequest, type SubscribeRequest, Transport } from "../contracts/transport.js"
import { checkCursorAddress, splitCursor } from "../flip/flip.js"
import type { DeliveredEvent } from "../model/envelope.js"
import { type BusError, ConfigError, type CursorInvalid, TransportFailure } from "../model/errors.js"
import { checkAddress, checkName } from "../model/name.js"
import { catchUpReads, inboxSkipped } from "../observability/metrics.js"
import {
  attachFeedCursor,
  type FeedCursor,
  FeedLog,
  type FeedPage,
  type FeedStats,
  feedStatsOf,
  nextFeedPage,
  type OpenFeedCursor,
} from "./feed.js"
import { checkStartCursor, headWithRetry, readFeed } from "./feedCursor.js"

/**
 * A transport that delivers straight from the outbox ({@link OutboxReader}): Postgres
 * LISTEN/NOTIFY and the in-memory transport are both this, over their own stores.
 *
 * Per address and process there is one shared *feed*: it reads the outbox from its
 * cursor each time the store signals a change and appends each page, once, to a bounded
 * in-memory log ({@link FeedLog}) that every local subscriber of the address reads by
 * index. A thousand subscribers of one channel cost one query and one decode per change;
 * each subscriber's own cost per page is an index check and a hand-off of the shared
 * array, and idle addresses cost nothing.
 *
 * A subscriber first joins the feed (waiting for a feed read that starts after it asked,
 * so the log holds nothing committed before its start), then catches up from its own
 * cursor, then takes the log's pages. Events the catch-up and the log both hold are
 * dropped at that seam only, by id: they are a prefix of the log from the join index on,
 * so the first log event the catch-up did not read ends the seam. An id alone does not name
 * one row: a replayed dead letter comes back with its id at a new position, so the seam
 * also compares its replay mark ({@link seamKey}). A subscriber that falls out of the log's
 * window (it stopped pulling) holds nothing: it reads the outbox from its own cursor again
 * and rejoins, so nothing is buffered for it without bound and nothing is skipped or
 * repeated.
 *
 * @module
 */

/**
 * What the seam compares: an event's id and its replay mark. A replay re-inserts the event
 * with its id and a fresh `bus-replayed-at` header (the old row goes in the same
 * transaction), so a catch-up that read the original and a live page that brings the replay
 * hold the same id: by id alone the seam took the replay for the copy it had read, and a
 * subscriber that joined around the original never received the replay (nor did a group
 * member, which then never handed it to the group that gave up on it). Each replay stamps
 * its own time, so two rows of one id differ here unless two replays of it ran in the same
 * millisecond, which needs the first replay delivered and dead-lettered again in between.
 */
const seamKey = (event: DeliveredEvent): string => {
  const replayed = event.headers[replayedHeader]
  return replayed === undefined ? event.id : `${event.id}\u0000${replayed}`
}

/** Options of {@link outboxTransport}. */
export interface OutboxTransportOptions {
  /** Transport name as used in config. */
  readonly name: string
  /** Rows per outbox read (default 500). */
  readonly pageSize?: number
  /**
   * Events each address's shared log keeps for subscribers that are a little behind
   * (default 4096). A subscriber further behind reads the outbox from its own cursor.
   */
  readonly feedWindow?: number
  /** Capability overrides. */
  readonly capabilities?: Partial<Omit<TransportCapabilities, "name">>
}

/** Default of {@link OutboxTransportOptions}' `feedWindow`. */
export const defaultFeedWindow = 4096

type Page = FeedPage

/** Where a joiner stands: the feed's cursor after a read, and the log index of what follows it. */
interface Joined {
  readonly index: number
  readonly cursor: string
}

interface Feed {
  readonly log: FeedLog
  /**
   * Waits for a feed read that starts after this call, and returns the log index after
   * it and the feed's cursor there: from that index on, the log holds only events
   * committed after any cursor the caller fixed before calling, and exactly those after
   * the returned cursor. Joins that wait together share one read.
   */
  readonly join: Effect.Effect<Joined, BusError>
}

const keyOf = (a: Address): string => `${a.tenant}\u0000${a.channel}`
const addressOf = (key: string): Address => {
  const [tenant = "", channel = ""] = key.split("\u0000")
  return { tenant, channel }
}

// Transient read failures (a dropped connection) are retried with capped backoff for
// ever; the cursor is kept, so nothing is skipped when the store comes back.
const readRetry = cappedBackoff("50 millis", "5 seconds")

const retryable = (e: BusError): boolean => e.retryable

const emptySet: ReadonlySet<string> = new Set()

/**
 * The shared logs of a transport, per address (`tenant/channel`).
 *
 * @internal
 * @deprecated use {@link feedStatsOf} (every transport with a shared log has them).
 */
export const outboxFeedStats = feedStatsOf

/**
 * Builds a {@link Transport} over the {@link OutboxReader} in context. Consumer groups use
 * the {@link GroupStore} and {@link DeadLetterStore} when the outbox provides them; an
 * outbox of a writer and a reader only gets a transport with `consumerGroups: false`, whose
 * `consume` fails with `ConfigError`.
 */
export const outboxTransport = (
  options: OutboxTransportOptions,
): Layer.Layer<Transport, never, OutboxReader> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const store = yield* OutboxReader
      const groups = yield* Effect.serviceOption(GroupStore)
      const letters = yield* Effect.serviceOption(DeadLetterStore)
      // Groups keep their position in the GroupStore and park what they give up on in the
      // DeadLetterStore: without both, this transport declares none (the suite skips them).
      const groupStores =
        Option.isSome(groups) && Option.isSome(letters)
          ? { groups: groups.value, letters: letters.value }
          : undefined
      const pageSize = options.pageSize ?? 500
      const feedWindow = Math.max(1, options.feedWindow ?? defaultFeedWindow)
      const catchUpCounter = Metric.withAttributes(catchUpReads, { transport: options.name })
      const skippedCounter = Metric.withAttributes(inboxSkipped, { transport: options.name })
      const wakers = new Map<string, Queue.Queue<void>>()
      const logs = new Map<string, FeedLog>()
      /** The feeds that exist now (a feed is never opened just to answer `head`). */
      const live = new Map<string, Feed>()

      const readWithRetry = (address: Address, cursor: string) =>
        store.read(address, cursor, pageSize).pipe(Effect.retry({ schedule: readRetry, while: retryable }))

      const feeds = yield* RcMap.make({
        lookup: (key: string) =>
          Effect.gen(function* () {
            const address = addressOf(key)
            yield* store.watch(address)
            const log = new FeedLog(feedWindow)
            // Capacity one, dropping: wake-ups that arrive during a read collapse into one more read.
            const wake = yield* Queue.dropping<void>(1)
            const joiners = new Set<(result: Effect.Effect<Joined, BusError>) => void>()
            let cursor = yield* headWithRetry(store, address)
            log.mark(cursor)
            const drain = Effect.gen(function* () {
              for (;;) {
                // The feed's own cursor refused (epoch rotated): see feedCursor.ts. Those in
                // the log are told once; whoever joins later starts past the refusal.
                const read = yield* readFeed(store, address, cursor, pageSize)
                if (read._tag === "Reanchored") {
                  cursor = read.head
                  log.refuse(read.refused)
                  log.mark(cursor)
                  return
                }
                const page = read.page
                cursor = page.next
                if (page.events.length > 0) log.append(page.events)
                log.mark(cursor)
                if (!page.more) return
                // A backlog is read page by page; subscribers take each page in between.
                yield* Effect.yieldNow
              }
            })
            yield* Effect.gen(function* () {
              for (;;) {
                yield* Queue.take(wake)
                // Joiners that asked before this read began: it starts after their cursors.
                const batch = [...joiners]
                joiners.clear()
                yield* drain
                const end = Effect.succeed<Joined>({ index: log.end, cursor })
                for (const resume of batch) resume(end)
              }
            }).pipe(
              Effect.catch((error: BusError) =>
                Effect.sync(() => {
                  log.fail(error)
                  const failed = Effect.fail(error)
                  for (const resume of joiners) resume(failed)
                  joiners.clear()
                }),
              ),
              Effect.forkScoped,
            )
            wakers.set(key, wake)
            logs.set(key, log)
            yield* Effect.addFinalizer(() =>
              Effect.sync(() => {
                wakers.delete(key)
                logs.delete(key)
                live.delete(key)
              }),
            )
            // The store's change stream is only followed while a feed exists, so a feed
            // created now may have missed a wake-up: read once to start.
            yield* Queue.offer(wake, undefined)
            const join = Effect.callback<Joined, BusError>((resume) => {
              if (log.failure !== undefined) return resume(Effect.fail(log.failure))
              joiners.add(resume)
              Queue.offerUnsafe(wake, undefined)
              return Effect.sync(() => {
                joiners.delete(resume)
              })
            })
            const feed: Feed = { log, join }
            live.set(key, feed)
            return feed
          }),
      })

      yield* store.changes.pipe(
        Stream.runForEach((address) => {
          const wake = wakers.get(keyOf(address))
          return wake ? Queue.offer(wake, undefined) : Effect.void
        }),
        Effect.retry({ schedule: readRetry, while: retryable }),
        Effect.catchCause((cause) => Effect.logError("outbox change stream ended", cause)),
        Effect.forkScoped,
      )

      /**
       * Where to read from: a cursor of this outbox as it is (the store checks the address
       * it names); another transport's cursor that carries an outbox frontier
       * (`redis1:…~@<tag>:pg1:…`, after a flip back to the outbox) resumes from that
       * frontier, unless the composite names another address (the frontier is a relay
       * cursor, bound to no address itself). Anything else goes to the store, which refuses it.
       */
      const startOf = (address: Address, from: string): Effect.Effect<string, CursorInvalid> => {
        if (from === "now" || from === "beginning" || store.ownsCursor(from)) return Effect.succeed(from)
        const { frontier } = splitCursor(from)
        if (frontier === undefined || !store.ownsCursor(frontier)) return Effect.succeed(from)
        const refused = checkCursorAddress(from, address)
        return refused === undefined ? Effect.succeed(frontier) : Effect.fail(refused)
      }

      /**
       * A subscriber's place in an address's pages after `from`: catch-up pages read from
       * the store, then the shared log's pages (see the module comment). Its state is its
       * cursor, its log index and, only between a join and the seam, the events (by
       * {@link seamKey}) the catch-up read after joining.
       */
      const openCursor: OpenFeedCursor = (address, from, joinNow = false) =>
        Effect.gen(function* () {
          const feed = yield* RcMap.get(feeds, keyOf(address))
          const { log } = feed
          /** Log index of the next page; -1 until joined (or after falling out of the window). */
          let index = -1
          let live = false
          let cursor: string
          if (from === "now" && joinNow) {
            // "now" is the feed's position after a read that began after this call: the
            // subscriber is in the log at once, with no head query and no catch-up read.
            const joined = yield* feed.join
            cursor = joined.cursor
            index = joined.index
            live = true
          } else {
            cursor = from === "now" ? yield* headWithRetry(store, address) : yield* startOf(address, from)
            // A position the feed itself handed out (a "now" of another subscriber, `head`):
            // join the log there, no catch-up read.
            const at = log.indexOf(cursor)
            if (at !== undefined) {
              index = at
              live = true
            }
          }
          const start = cursor
          let seam: Set<string> | undefined
          let seamFull = false
          /** Why the log ended for this subscriber (a failed feed, or its refusal). */
          let failure: BusError | undefined
          const step: Effect.Effect<Page | undefined, BusError> = Effect.suspend(() => {
            if (live) {
              // Only a failed or refused feed sends a live subscriber here.
              const error = failure ?? log.failure
              return error !== undefined ? Effect.fail(error) : Effect.succeed(undefined)
            }
            return Effect.gen(function* () {
              if (index < 0) {
                index = (yield* feed.join).index
                seam = new Set()
                seamFull = false
              }
              const page = yield* readWithRetry(address, cursor)
              yield* Metric.update(catchUpCounter, 1)
              cursor = page.next
              if (seam !== undefined && !seamFull) {
                for (const event of page.events) seam.add(seamKey(event))
                seamFull = seam.size > feedWindow
              }
              if (!page.more) {
                if (seamFull) {
                  // The overlap is larger than worth remembering (the feed ran ahead during a
                  // long catch-up): join again from here, with a fresh seam.
                  index = -1
                  seam = undefined
                } else {
                  live = true
                  if (seam?.size === 0) seam = undefined
                }
              }
              return page.events.length > 0 ? { events: page.events, live: false } : undefined
            })
          })
          const poll = (): Page | "wait" | "step" => {
            if (!live) return "step"
            for (;;) {
              const found = log.take(index)
              switch (found._tag) {
                case "page": {
                  index++
                  let events = found.events
                  if (seam !== undefined) {
                    const read = seam
                    // Already delivered by the catch-up: skip; the first event it did not
                    // read ends the seam (the overlap is a prefix of the log).
                    if (events.every((e) => read.has(seamKey(e)))) continue
                    seam = undefined
                    events = events.filter((e) => !read.has(seamKey(e)))
                  }
                  cursor = events[events.length - 1]!.cursor
                  return { events, live: true }
                }
                case "wait":
                  return "wait"
                case "lagged":
                  // Fell out of the window: nothing was kept for it; resume from its cursor.
                  live = false
                  index = -1
                  seam = undefined
                  return "step"
                case "failed":
                  failure = found.error
                  return "step"
              }
            }
          }
          return {
            start,
            poll,
            step,
            onAppend: (wake: () => void) => log.onAppend(wake),
          } satisfies FeedCursor
        })

      const nextPage = (address: Address, from: string) => Effect.map(openCursor(address, from), nextFeedPage)

      const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
        Stream.unwrap(
          Effect.gen(function* () {
            const address = yield* checkAddress(request)
            const next = yield* nextPage(address, request.from ?? "now")
            // Each chunk is the page itself: the log's shared array, not a copy.
            return Stream.fromPull(
              Effect.succeed(
                Effect.map(
                  next,
                  (page) => page.events as readonly [DeliveredEvent, ...Array<DeliveredEvent>],
                ),
              ),
            )
          }),
        )

      const group = (request: GroupRequest): Stream.Stream<Delivery, BusError> =>
        Stream.unwrap(
          Effect.gen(function* () {
            if (groupStores === undefined) {
              return yield* new ConfigError({
                message: `consume needs an outbox with a GroupStore and a DeadLetterStore; the ${store.name} outbox provides neither (it serves subscribe only)`,
              })
            }
            const { groups, letters } = groupStores
            const address = yield* checkAddress(request)
            const groupName = yield* checkName("group", request.group)
            const key = { ...address, group: groupName }
            // One member of a group reads the outbox at a time, in order: the group's
            // position is a single cursor, and it only moves past acknowledged events.
            const claim = yield* groups.claimGroup(address, groupName)
            const deliveries = yield* Queue.bounded<Delivery, BusError | Cause.Done>(1)
            const deliver = (event: DeliveredEvent) =>
              Effect.gen(function* () {
                for (let attempt = 1; ; attempt++) {
                  const settled = yield* Deferred.make<number | "done">()
                  const delivery: Delivery = {
                    event,
                    attempt,
                    inbox: true,
                    // The position and the inbox entry in one write.
                    ack: claim
                      .commit(event.cursor, event.id)
                      .pipe(Effect.andThen(Deferred.succeed(settled, "done"))),
                    retry: (delayMs) => Deferred.succeed(settled, delayMs).pipe(Effect.asVoid),
                    deadLetter: (reason) =>
                      letters
                        .deadLetter({
                          event,
                          reason,
                          source: groupName,
                          attempts: attempt,
                          at: new Date().toISOString(),
                        })
                        .pipe(
                          // The letter recorded the event in the group's inbox (one write);
                          // recording it again here would undo a replay that ran between.
                          Effect.andThen(claim.commit(event.cursor)),
                          Effect.andThen(Deferred.succeed(settled, "done")),
                        ),
                    inProgress: Effect.void,
                  }
                  yield* Queue.offer(deliveries, delivery)
                  const outcome = yield* Deferred.await(settled)
                  if (outcome === "done") return
                  yield* Effect.sleep(outcome)
                }
              })
            // Catch-up pages (events committed before this member joined the feed) may hold
            // events the group handled already: on another transport before a flip, or by a
            // member whose ack was lost. One inbox lookup per page finds them; they are
            // skipped, and the position moves past them. Live events are new to the group,
            // unless an operator replayed a dead letter (marked by its header): the groups
            // that handled it before must skip it.
            const onPage = (page: Page) =>
              Effect.gen(function* () {
                const ids = page.events.map((e) => e.id)
                const done =
                  (page.live && !page.events.some((e) => e.headers[replayedHeader] !== undefined)) ||
                  ids.length === 0
                    ? emptySet
                    : yield* groups
                        .handled(key, ids)
                        .pipe(Effect.retry({ schedule: readRetry, while: retryable }))
                let skippedCursor: string | undefined
                for (const event of page.events) {
                  if (done.has(event.id)) {
                    skippedCursor = event.cursor
                    yield* Metric.update(skippedCounter, 1)
                    continue
                  }
                  skippedCursor = undefined
                  yield* deliver(event)
                }
                if (skippedCursor !== undefined) yield* claim.commit(skippedCursor)
              })
            const next = yield* nextPage(address, claim.cursor)
            yield* Effect.forever(Effect.flatMap(next, onPage)).pipe(
              Effect.catchCause((cause) => Queue.failCause(deliveries, cause)),
              Effect.andThen(Queue.end(deliveries)),
              Effect.forkScoped,
            )
            return Stream.fromQueue(deliveries)
          }),
        )

      const noRelay = new TransportFailure({
        transport: options.name,
        retryable: false,
        message: `${options.name} delivers straight from the outbox; it takes no relay`,
      })
      const service = Transport.of({
        capabilities: makeCapabilities(options.name, {
          ...options.capabilities,
          ...(groupStores === undefined ? { consumerGroups: false } : {}),
        }),
        // While the address has a feed, "now" is the feed's position after a read that began
        // after this call: concurrent callers (SSE clients connecting together) share that
        // read, and the cursor is a mark the feed knows, so subscribing from it costs no read.
        head: (address) =>
          checkAddress(address).pipe(
            Effect.flatMap((a) => {
              const feed = live.get(keyOf(a))
              return feed !== undefined && feed.log.failure === undefined
                ? Effect.map(feed.join, (j) => j.cursor)
                : store.head(a)
            }),
          ),
        // A mark of the live feed is a position the feed read from: nothing to check.
        checkStart: (address, from) =>
          checkAddress(address).pipe(
            Effect.flatMap((a) =>
              Effect.flatMap(startOf(a, from), (start) =>
                logs.get(keyOf(a))?.indexOf(start) !== undefined
                  ? Effect.void
                  : checkStartCursor(store, a, start),
              ),
            ),
          ),
        subscribe,
        group,
        deadLetters: (limit) =>
          Option.isSome(letters) ? letters.value.deadLetters(limit) : Effect.succeed([]),
        send: () => Effect.fail(noRelay),
        sendAll: (items) => Effect.succeed(items.length === 0 ? { sent: 0 } : { sent: 0, error: noRelay }),
      })
      return attachFeedCursor(service, openCursor, () => {
        const out = new Map<string, FeedStats>()
        for (const [key, log] of logs) out.set(key.replace("\u0000", "/"), log.stats())
        return out
      })
    }),
  )
