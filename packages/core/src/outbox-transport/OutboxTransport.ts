import {
  type Cause,
  Deferred,
  Effect,
  Layer,
  Metric,
  Option,
  PubSub,
  Queue,
  RcMap,
  type Scope,
  Semaphore,
  Stream,
} from "effect"
import { capabilities as makeCapabilities, type TransportCapabilities } from "../contracts/Capabilities.js"
import { type Address, OutboxStore } from "../contracts/OutboxStore.js"
import { type Delivery, type GroupRequest, type SubscribeRequest, Transport } from "../contracts/Transport.js"
import type { DeliveredEvent } from "../envelope/Envelope.js"
import { type BusError, TransportFailure } from "../errors/BusError.js"
import { splitCursor } from "../flip/flip.js"
import { catchUpReads, inboxSkipped } from "../metrics/metrics.js"
import { checkAddress, checkName } from "../names/Name.js"
import { cappedBackoff } from "../schedule/backoff.js"
import { defaultDedupeWindow } from "./dedupe.js"
import { checkStartCursor, headWithRetry, readFeed } from "./feedCursor.js"

/**
 * A transport that delivers straight from an {@link OutboxStore}: Postgres
 * LISTEN/NOTIFY and the in-memory transport are both this, over their own stores.
 *
 * Per address and process there is one shared *feed*: it reads the outbox from its
 * cursor each time the store signals a change and fans the pages out in memory, so a
 * thousand subscribers of one channel cost one query per change, and idle ones cost
 * none. A new subscriber first joins the feed, then catches up from its own cursor;
 * events seen on both paths are dropped by id, so the hand-over has no gap and no
 * duplicate.
 *
 * @module
 */

/** Options of {@link outboxTransport}. */
export interface OutboxTransportOptions {
  /** Transport name as used in config. */
  readonly name: string
  /** Rows per outbox read (default 500). */
  readonly pageSize?: number
  /** Capability overrides. */
  readonly capabilities?: Partial<Omit<TransportCapabilities, "name">>
}

type FeedItem = ReadonlyArray<DeliveredEvent> | BusError

interface Feed {
  /**
   * Subscribes after bringing the feed up to the head, so the feed never publishes to
   * this subscriber anything committed before it joined.
   */
  readonly join: Effect.Effect<PubSub.Subscription<FeedItem>, BusError, Scope.Scope>
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

/** Drops events whose id an earlier page of the stream held (bounded window, oldest first out). */
const dedupePages =
  (window: number = defaultDedupeWindow) =>
  <A extends { readonly events: ReadonlyArray<DeliveredEvent> }, E, R>(
    self: Stream.Stream<A, E, R>,
  ): Stream.Stream<A, E, R> =>
    Stream.suspend(() => {
      const seen = new Set<string>()
      return self.pipe(
        Stream.map((page) => {
          const events = page.events.filter((event) => {
            if (seen.has(event.id)) return false
            seen.add(event.id)
            if (seen.size > window) seen.delete(seen.values().next().value as string)
            return true
          })
          return events.length === page.events.length ? page : { ...page, events }
        }),
        Stream.filter((page) => page.events.length > 0),
      )
    })

/** Builds a {@link Transport} over the {@link OutboxStore} in context. */
export const outboxTransport = (
  options: OutboxTransportOptions,
): Layer.Layer<Transport, never, OutboxStore> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const store = yield* OutboxStore
      const pageSize = options.pageSize ?? 500
      const catchUpCounter = Metric.withAttributes(catchUpReads, { transport: options.name })
      const skippedCounter = Metric.withAttributes(inboxSkipped, { transport: options.name })
      const wakers = new Map<string, Queue.Queue<void>>()

      const readWithRetry = (address: Address, cursor: string) =>
        store.read(address, cursor, pageSize).pipe(Effect.retry({ schedule: readRetry, while: retryable }))

      const feeds = yield* RcMap.make({
        lookup: (key: string) =>
          Effect.gen(function* () {
            const address = addressOf(key)
            yield* store.watch(address)
            const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<FeedItem>(), PubSub.shutdown)
            // Capacity one, dropping: wake-ups that arrive during a read collapse into one more read.
            const wake = yield* Queue.dropping<void>(1)
            let cursor = yield* headWithRetry(store, address)
            const drain = Effect.gen(function* () {
              for (;;) {
                // The feed's own cursor refused (epoch rotated): see feedCursor.ts.
                const read = yield* readFeed(store, address, cursor, pageSize)
                if (read._tag === "Reanchored") {
                  cursor = read.head
                  return yield* PubSub.publish(pubsub, read.refused)
                }
                const page = read.page
                cursor = page.next
                if (page.events.length > 0) yield* PubSub.publish(pubsub, page.events)
                if (!page.more) return
              }
            })
            // Reads and joins take turns, so a joining subscriber sees the feed at a known place.
            const lock = yield* Semaphore.make(1)
            yield* Queue.take(wake).pipe(
              Effect.andThen(Semaphore.withPermit(lock)(drain)),
              Effect.forever,
              Effect.catch((error: BusError) => PubSub.publish(pubsub, error)),
              Effect.forkScoped,
            )
            wakers.set(key, wake)
            yield* Effect.addFinalizer(() => Effect.sync(() => wakers.delete(key)))
            // The store's change stream is only followed while a feed exists, so a feed
            // created now may have missed a wake-up: read once to start.
            yield* Queue.offer(wake, undefined)
            const join = Semaphore.withPermit(lock)(drain.pipe(Effect.andThen(PubSub.subscribe(pubsub))))
            return { join } satisfies Feed
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

      /** A page of events, and whether it came from the live feed (committed after the stream joined it). */
      interface Page {
        readonly events: ReadonlyArray<DeliveredEvent>
        readonly live: boolean
      }

      /**
       * Where to read from: a cursor of this outbox as it is; another transport's cursor
       * that carries an outbox frontier (`redis1:…~pg1:…`, after a flip back to the outbox)
       * resumes from that frontier. Anything else goes to the store, which refuses it.
       */
      const startOf = (from: string): string => {
        if (from === "now" || from === "beginning" || store.ownsCursor(from)) return from
        const { frontier } = splitCursor(from)
        return frontier !== undefined && store.ownsCursor(frontier) ? frontier : from
      }

      /**
       * Pages of an address after `from`: catch-up pages read from the store, then the live
       * feed's pages, with repeats of an event id (the overlap of the two) dropped.
       */
      const pages = (address: Address, from: string): Stream.Stream<Page, BusError> =>
        Stream.unwrap(
          Effect.gen(function* () {
            const feed = yield* RcMap.get(feeds, keyOf(address))
            // Join the live feed before catching up, so nothing committed in between is missed.
            const subscription = yield* feed.join
            const start = from === "now" ? yield* headWithRetry(store, address) : startOf(from)
            const catchUp = Stream.paginate(start, (cursor) =>
              readWithRetry(address, cursor).pipe(
                Effect.tap(() => Metric.update(catchUpCounter, 1)),
                Effect.map(
                  (page) =>
                    [
                      [{ events: page.events, live: false } satisfies Page],
                      page.more ? Option.some(page.next) : Option.none(),
                    ] as const,
                ),
              ),
            )
            const live = Stream.fromSubscription(subscription).pipe(
              Stream.mapEffect((item) =>
                Array.isArray(item)
                  ? Effect.succeed({
                      events: item as ReadonlyArray<DeliveredEvent>,
                      live: true,
                    } satisfies Page)
                  : Effect.fail(item as BusError),
              ),
            )
            return Stream.concat(catchUp, live).pipe(dedupePages())
          }),
        )

      const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
        Stream.unwrap(
          checkAddress(request).pipe(
            Effect.map((address) =>
              pages(address, request.from ?? "now").pipe(
                Stream.map((page) => page.events),
                Stream.flattenIterable,
              ),
            ),
          ),
        )

      const group = (request: GroupRequest): Stream.Stream<Delivery, BusError> =>
        Stream.unwrap(
          Effect.gen(function* () {
            const address = yield* checkAddress(request)
            const groupName = yield* checkName("group", request.group)
            const key = { ...address, group: groupName }
            // One member of a group reads the outbox at a time, in order: the group's
            // position is a single cursor, and it only moves past acknowledged events.
            const claim = yield* store.claimGroup(address, groupName)
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
                      store
                        .deadLetter({
                          event,
                          reason,
                          source: groupName,
                          attempts: attempt,
                          at: new Date().toISOString(),
                        })
                        .pipe(
                          Effect.andThen(claim.commit(event.cursor, event.id)),
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
            // skipped, and the position moves past them. Live events are new to the group.
            const onPage = (page: Page) =>
              Effect.gen(function* () {
                const ids = page.events.map((e) => e.id)
                const done =
                  page.live || ids.length === 0
                    ? emptySet
                    : yield* store
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
            yield* pages(address, claim.cursor).pipe(
              Stream.runForEach(onPage),
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
      return Transport.of({
        capabilities: makeCapabilities(options.name, options.capabilities),
        head: (address) => checkAddress(address).pipe(Effect.flatMap(store.head)),
        checkStart: (address, from) =>
          checkAddress(address).pipe(Effect.flatMap((a) => checkStartCursor(store, a, startOf(from)))),
        subscribe,
        group,
        deadLetters: (limit) => store.deadLetters(limit),
        send: () => Effect.fail(noRelay),
        sendAll: (items) => Effect.succeed(items.length === 0 ? { sent: 0 } : { sent: 0, error: noRelay }),
      })
    }),
  )
