import { BusClosed, type BusError, type DeliveredEvent, TransportUnavailable } from "@bus/core"
import {
  type Address,
  addressTag,
  FeedLog,
  type GateItem,
  type GatePage,
  indexAfter,
  retryWhileRetryable,
} from "@bus/core/adapter"
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream"
import { Cause, Effect, Fiber } from "effect"
import { toBusError } from "./errors.js"
import type { SubscribeDeps } from "./subscribe.js"
import { decodeMessage, positionOfMessage } from "./wire.js"

/**
 * The shared live feed of one address in one process: one ordered JetStream consumer
 * reads the address's subject, each message is decoded once, and each burst of decoded
 * events is appended, once, as one page of core's {@link FeedLog} (the log the outbox
 * transports use). Every local subscriber of the address reads that log by index
 * (`subscribe.ts`): 10,000 subscribers of one channel cost one consumer on the server,
 * one decode per event and one page per burst here, and a subscriber's own cost per page
 * is a sequence check and a hand-off of the shared array.
 *
 * Positions are stream sequences, which only grow along a subject. Beside each page the
 * feed keeps the sequences it covers ({@link PageMeta}: from the feed's position before
 * the burst to the last message in it, malformed messages included), so a subscriber that
 * needs every message from a sequence on finds the page to start at ({@link Feed.indexFor})
 * and drops what it already delivered by sequence: no gap, no duplicate, no set of ids.
 * A sequence older than the log's window is read from the stream by the subscriber itself.
 *
 * The log keeps at most `subscriberBuffer` events (at least the newest page): a subscriber
 * that falls further behind holds nothing but its cursor and reads the stream from it when
 * it pulls again. One slow reader never holds the feed (or the others) back and never
 * grows memory.
 *
 * A feed reads one stream, as `streamWatch.ts` knows it. When that stream is lost (deleted,
 * or gone with the server's store), the feed leaves the map and ends its log with
 * {@link Feed.replaced}: each subscriber, once it took the pages before, resumes on the new
 * stream by outbox position (`subscribe.ts`). A feed that fails for good ends its log with
 * the error, which every subscriber then gets.
 *
 * @module
 */

/** One stream message of the feed's subject (core `GateItem`; `pos` is its stream sequence). */
export type Item = GateItem<number>

/**
 * What the feed knows of one page of its log (core `GatePage`): every message of the subject
 * after sequence `from` up to `to` is in the page (or was malformed and skipped).
 */
export type PageMeta = GatePage<number, Item>

/** One address's feed, as its subscribers see it. */
export interface Feed {
  readonly log: FeedLog
  /** The sequences and items of a page of {@link Feed.log}. */
  readonly meta: (page: ReadonlyArray<DeliveredEvent>) => PageMeta
  /**
   * The log index a subscriber that needs every message from `seq` on starts at, or
   * undefined when the log no longer holds them all (it reads the stream first).
   */
  readonly indexFor: (seq: number) => number | undefined
  /** Every message of the subject up to this sequence is in the log (or before its window). */
  readonly position: () => number
  /** The log's end when the feed's stream was lost: its subscribers resume on the new one. */
  readonly replaced: BusError
  /** The stream generation (`streamWatch.ts`) the feed reads. */
  readonly generation: number
}

/**
 * Runs the feed of `address` for the life of the calling scope. `startAfter` is the
 * stream sequence the feed starts after.
 */
export const runFeed = (
  deps: SubscribeDeps,
  address: Address,
  subject: string,
  startAfter: number,
  onFailure: (error: BusError) => Effect.Effect<void>,
  onReplaced: Effect.Effect<void>,
) =>
  Effect.gen(function* () {
    // The stream this feed reads, fixed for its life: a lost stream replaces the feed.
    const { id: stream, generation } = deps.watch.current()
    const place = { address: addressTag(address), stream }
    const log = new FeedLog(deps.o.subscriberBuffer)
    const metas = new WeakMap<ReadonlyArray<DeliveredEvent>, PageMeta>()
    const replaced = new TransportUnavailable({
      transport: "nats",
      message: `nats: stream ${deps.o.streamName} was lost under the feed of ${subject}`,
    })
    /** Every message of the subject up to here has been appended. */
    let position = startAfter
    /** Last sequence received from the consumer (appended or waiting in `pending`). */
    let received = startAfter
    let pending: Array<Item> = []

    const flush = () => {
      if (pending.length === 0) return
      const batch = pending
      pending = []
      const from = position
      position = batch[batch.length - 1]!.pos
      const items: Array<Item> = []
      const events: Array<DeliveredEvent> = []
      let minAt = Number.POSITIVE_INFINITY
      for (const item of batch) {
        if (item.event === undefined) continue
        items.push(item)
        events.push(item.event)
        if (item.at < minAt) minAt = item.at
      }
      if (events.length === 0) return
      metas.set(events, { from, to: position, items, minAt })
      log.append(events)
    }

    const indexFor = (seq: number): number | undefined =>
      indexAfter(
        log,
        (x: number, y: number) => x - y,
        seq - 1,
        position,
        startAfter,
        (page) => metas.get(page),
      )

    const onMessage = (m: JsMsg) =>
      Effect.gen(function* () {
        const seq = m.seq
        // A consumer created again may repeat what the last one delivered.
        if (seq <= received) return
        received = seq
        const decoded = yield* Effect.exit(decodeMessage(m.data, seq, address, m.headers, place))
        if (decoded._tag === "Failure") {
          const reason = Cause.squash(decoded.cause)
          yield* Effect.logWarning(`nats: skipped malformed message ${subject}#${seq}: ${String(reason)}`)
          pending.push({ pos: seq, event: undefined, position: undefined, at: 0 })
          return
        }
        const event = decoded.value
        pending.push({ pos: seq, event, position: positionOfMessage(m.headers), at: Date.parse(event.time) })
      })

    const once = Effect.scoped(
      Effect.gen(function* () {
        const consumer = yield* Effect.tryPromise({
          try: () =>
            deps.js.consumers.get(deps.o.streamName, {
              filter_subjects: subject,
              inactive_threshold: 120_000,
              deliver_policy: DeliverPolicy.StartSequence,
              opt_start_seq: received + 1,
            }),
          catch: (e) => toBusError(e, `create ordered consumer on ${subject}`),
        })
        const messages = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () => consumer.consume({ max_messages: 256, expires: 10_000 }),
            catch: (e) => toBusError(e, `consume ${subject}`),
          }),
          (messages) =>
            Effect.sync(() => {
              messages.stop()
              // An ephemeral consumer would linger until its inactivity threshold: delete it now.
              consumer.delete().catch(() => {})
            }),
        )
        // After a reconnect the consumer may be gone with the server's memory: start over now.
        yield* deps.conn.nextReconnect.pipe(
          Effect.andThen(Effect.sync(() => messages.stop())),
          Effect.forkScoped,
        )
        // A consumer deleted under the feed may mean a lost stream. The client would make the
        // ordered consumer again at the next sequence, on whatever stream now has the name:
        // on a new stream that sequence means something else. Stop instead; the loop has the
        // stream checked before it starts over (and a lost stream replaces the feed). The
        // client's own resets (a gap, missed heartbeats) only get the stream checked.
        const notices = messages.status()[Symbol.asyncIterator]()
        yield* Effect.gen(function* () {
          for (;;) {
            const next = yield* Effect.promise(() => notices.next())
            if (next.done) return
            const type = next.value.type
            if (type === "consumer_deleted" || type === "stream_not_found") {
              messages.stop()
              return
            }
            if (type === "ordered_consumer_recreated") yield* deps.watch.check(`feed on ${subject}: ${type}`)
          }
        }).pipe(Effect.forkScoped)
        const iterator = messages[Symbol.asyncIterator]()
        let nextMessage: Promise<IteratorResult<JsMsg>> | undefined
        for (;;) {
          nextMessage ??= iterator.next()
          const waiting = nextMessage
          // One page per burst, from this fiber: the messages the client has already
          // buffered arrive before the event loop turns and join the page; then it goes.
          if (pending.length > 0) {
            const arrived = yield* Effect.promise(() =>
              Promise.race([
                waiting.then(
                  () => true,
                  () => true,
                ),
                new Promise<boolean>((resolve) => setImmediate(() => resolve(false))),
              ]),
            )
            if (!arrived) {
              flush()
              continue
            }
          }
          const next = yield* Effect.tryPromise({
            try: () => waiting,
            catch: (e) => toBusError(e, `subscription feed on ${subject}`),
          })
          nextMessage = undefined
          if (next.done) {
            flush()
            return yield* Effect.fail(
              toBusError(new Error("the consumer stopped"), `subscription feed on ${subject}`),
            )
          }
          yield* onMessage(next.value)
          if (pending.length >= 256) flush()
        }
      }),
    )

    // One consumer per turn; a failed turn is retried on core's schedule. Every failure has
    // the stream checked before the next consumer is made (see `once`); a turn that read
    // something before it failed ends as a success after that, so the backoff starts again.
    const turn = Effect.gen(function* () {
      const before = received
      const exit = yield* Effect.exit(once)
      flush()
      if (exit._tag === "Success") return
      const busError = toBusError(Cause.squash(exit.cause), `subscription feed on ${subject}`)
      if (!busError.retryable) return yield* Effect.fail(busError)
      if (deps.conn.closed()) {
        return yield* new BusClosed({
          message: `nats: the connection is closed; subscriptions on ${subject} end`,
        })
      }
      // A consumer that cannot be made, or one deleted under the feed, may mean a lost stream:
      // have it checked now.
      yield* deps.watch.check(`feed on ${subject}: ${busError.message}`)
      if (received === before) return yield* Effect.fail(busError)
    })
    const loop = Effect.forever(retryWhileRetryable(turn, `nats: feed on ${subject}`))

    // Out of the map first (a later subscription, or one told "replaced", starts a new feed),
    // then the log ends, in one uninterruptible step: ending the feed may close its scope.
    const end = (leave: Effect.Effect<void>, error: BusError) =>
      Effect.uninterruptible(leave.pipe(Effect.andThen(Effect.sync(() => log.fail(error)))))
    const running = yield* loop.pipe(
      Effect.catch((error: BusError) => end(onFailure(error), error)),
      Effect.forkScoped,
    )
    yield* deps.watch
      .changedSince(generation)
      .pipe(
        Effect.andThen(end(onReplaced, replaced)),
        Effect.andThen(Fiber.interrupt(running)),
        Effect.forkScoped,
      )
    return {
      log,
      meta: (page) => metas.get(page)!,
      indexFor,
      position: () => position,
      replaced,
      generation,
    } satisfies Feed
  })
