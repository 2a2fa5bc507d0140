import { type BusError, CursorInvalid, type DeliveredEvent } from "@bus/core"
import {
  type Address,
  type Anchor,
  addressKey,
  addressOfKey,
  addressTag,
  type BrokerSubscribe,
  checkAddress,
  coalesce,
  type FeedCursor,
  type FeedLog,
  type FeedPage,
  feedLogStats,
  feedStream,
  flipCursorExpired,
  type LogPlace,
  notCoveredBy,
  type OpenFeedCursor,
  type OutboxReader,
  outboxCursorOf,
  outboxHeads,
  PositionGate,
  pollLog,
  retryWhileRetryable,
  type SubscribeRequest,
  sharedAnchoredFilters,
  splitCursor,
} from "@bus/core/adapter"
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type MsgRequest,
  type StreamState,
} from "@nats-io/jetstream"
import type { MsgHdrs } from "@nats-io/transport-node"
import { Cause, Effect, Exit, Option, Queue, RcMap, Scope, Semaphore, type Stream } from "effect"
import type { ConnectionWatch } from "./connection.js"
import { type CursorPlace, encodeCursor, encodeHeadCursor, parseCursor } from "./cursor.js"
import { toBusError } from "./errors.js"
import { type Feed, type Item, runFeed } from "./feed.js"
import { subjectOf } from "./names.js"
import type { ResolvedOptions } from "./options.js"
import type { StreamWatch } from "./streamWatch.js"
import { decodeMessage, positionOfMessage } from "./wire.js"

/**
 * Subscriptions share one feed per address and process (see `feed.ts`): one ordered
 * JetStream consumer per (tenant, channel) in this process, whose pages go, once, into a
 * shared log (core's `FeedLog`) that every local subscriber of it reads by index. A
 * subscriber is a {@link FeedCursor} (core's contract, attached to the transport with
 * `attachFeedCursor`): the Promise facade pulls it directly, with no fiber, stream or queue
 * per subscription, and the Effect `Stream` of `subscribe` reads the same cursor, so there
 * is one delivery path. Its state is the last stream sequence it delivered and its index
 * in the log: it joins at the page covering the sequence after its cursor, or, when the log
 * no longer holds it, first reads the stream up to where the feed stands (catch-up) and
 * looks again; it drops every message at or below the last sequence it delivered, so the
 * seam has no gap and no duplicate. A subscriber that falls out of the log's window holds
 * nothing and resumes the same way from its own sequence.
 *
 * The stream-state and outbox-head requests every subscription makes at its start are
 * coalesced: the subscriptions started in one burst (10,000 in a loop) share one request,
 * sent after the last of them asked, so its answer is as fresh as each one needs.
 *
 * @module
 */

/** What the subscription side needs from the transport. */
export interface SubscribeDeps {
  /** For ordered consumers: a short request timeout, so a retry comes soon after an election. */
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  readonly o: ResolvedOptions
  readonly store: Option.Option<OutboxReader["Service"]>
  readonly conn: ConnectionWatch
  readonly watch: StreamWatch
}

/** Where a subscription starts: the first stream sequence it may deliver, and its filters (core's gate). */
interface Start {
  readonly seq: number
  /** After a flip: keeps the stream messages an outbox cursor does not cover (by their stored position). */
  readonly keep?: (position: string | undefined) => boolean
  /** A head cursor's anchor over an outbox: its filter keeps what committed after it (core `sharedAnchoredFilters`). */
  readonly anchor?: Anchor
  /**
   * The outbox cursor covering everything before the start, if known: where the subscription
   * resumes if the stream is lost before it delivered anything ("beginning" from the start).
   */
  readonly frontier?: string
  /** The stream generation the start was resolved on. */
  readonly generation: number
  /** For "now": the head cursor it was resolved to (what the subscription reports as its start). */
  readonly head?: string
}

/** `head` and `subscribe` of the NATS transport; the feeds live in the caller's (the layer's) scope. */
export const makeSubscribe = (deps: SubscribeDeps): Effect.Effect<BrokerSubscribe, never, Scope.Scope> =>
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const streamState = coalesce(
      scope,
      () =>
        retryWhileRetryable(
          Effect.tryPromise({
            try: () => deps.jsm.streams.info(deps.o.streamName),
            catch: (e) => toBusError(e, `stream info ${deps.o.streamName}`),
          }),
          "nats: stream info",
        ).pipe(Effect.map((info): StreamState => info.state)),
      closing,
    )
    const state = streamState("")
    const outboxHead = outboxHeads(scope, deps.store, "nats")

    /**
     * `head`: the stream's last sequence and, with an outbox, the outbox's head taken right
     * after it. The relay sends a row only after it committed, so every event committed
     * after that outbox head lands above that sequence: a subscription from the cursor
     * starts right after it and misses nothing committed later.
     */
    const head = (request: Address): Effect.Effect<string, BusError> =>
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const { last_seq } = yield* state
        const place: CursorPlace = { address: addressTag(address), stream: deps.watch.current().id }
        if (outboxHead === undefined) return encodeCursor(last_seq, place)
        const anchor = yield* outboxHead(address)
        return encodeHeadCursor(place, last_seq, anchor.at, anchor.outboxHead)
      })

    /**
     * An outbox cursor checked by the outbox itself (one read of at most one row): its epoch,
     * its retention and, where the outbox binds cursors to addresses, its address. The
     * broker then replays its stream from the start, which must still hold everything it
     * received: a trimmed stream could leave a gap.
     */
    const fromOutboxCursor = (
      address: Address,
      from: string,
      outboxCursor: string,
      generation: number,
    ): Effect.Effect<Start, BusError> =>
      Effect.gen(function* () {
        const store = (deps.store as Option.Some<OutboxReader["Service"]>).value
        if (outboxCursor !== "beginning") yield* store.read(address, outboxCursor, 1)
        const s = yield* state
        if (s.first_seq > 1 || s.num_deleted > 0) {
          return yield* flipCursorExpired(from, `stream ${deps.o.streamName}`)
        }
        return { seq: 1, keep: notCoveredBy(store, outboxCursor), frontier: outboxCursor, generation }
      })

    /** Resolves `from` to a start sequence (and, for a head cursor over an outbox, a classifier). */
    const resolveStart = (address: Address, from: string): Effect.Effect<Start, BusError> =>
      Effect.gen(function* () {
        const generation = deps.watch.current().generation
        if (from === "beginning") return { seq: 1, frontier: "beginning", generation }
        // After a flip: an outbox cursor (or another broker's cursor carrying its outbox frontier).
        // The stream holds every event the relay forwarded with its outbox position: read it from
        // the start and skip exactly what the cursor covers.
        const outboxCursor =
          from === "now" || !(parseCursor(from) instanceof CursorInvalid)
            ? undefined
            : outboxCursorOf(deps.store, from)
        if (outboxCursor !== undefined && Option.isSome(deps.store)) {
          return yield* fromOutboxCursor(address, from, outboxCursor, generation)
        }
        const cursor = from === "now" ? yield* head(address) : from
        const parsed = parseCursor(cursor)
        if (parsed instanceof CursorInvalid) return yield* parsed
        if (parsed.address !== undefined && parsed.address !== addressTag(address)) {
          return yield* new CursorInvalid({
            cursor: from,
            reason: "address",
            message: `cursor ${from} belongs to another tenant or channel than ${address.tenant}/${address.channel}; resume from "beginning" or "now", or with this channel's own cursor`,
          })
        }
        const frontier = parsed.anchor?.outboxHead ?? splitCursor(cursor).frontier
        const current = deps.watch.current()
        if (parsed.stream !== undefined && parsed.stream !== current.id) {
          // The stream this cursor points into no longer exists (deleted, or lost with the
          // server's store): its sequence means nothing in the new one. Resume by the outbox
          // position it carries, or say so.
          if (frontier !== undefined && Option.isSome(deps.store) && deps.store.value.ownsCursor(frontier)) {
            return yield* fromOutboxCursor(address, from, frontier, generation)
          }
          return yield* new CursorInvalid({
            cursor: from,
            reason: "expired",
            message: `cursor ${from} points into a stream ${deps.o.streamName} that no longer exists (deleted or lost with the server's store; the stream now was created ${current.created}) and carries no outbox position to resume from; resume from "beginning" or "now"`,
          })
        }
        // Above a head cursor's sequence the stream may still bring events committed before
        // the outbox head (the relay's backlog when the head was taken): core's anchored
        // filter tells them apart, per page when it can.
        const anchor = parsed.anchor !== undefined && Option.isSome(deps.store) ? parsed.anchor : undefined
        const base = {
          ...(anchor ? { anchor } : {}),
          ...(frontier !== undefined ? { frontier } : {}),
          generation,
        }
        if (from === "now") return { seq: parsed.seq + 1, ...base, head: cursor }
        const s = yield* state
        if (parsed.seq > s.last_seq) {
          return yield* new CursorInvalid({
            cursor: from,
            reason: "foreign",
            message: `cursor ${from} is ahead of stream ${deps.o.streamName} (last sequence ${s.last_seq}): it comes from another stream, or the stream was recreated`,
          })
        }
        if (parsed.seq + 1 < s.first_seq) {
          return yield* new CursorInvalid({
            cursor: from,
            reason: "expired",
            message: `cursor ${from} is older than the events stream ${deps.o.streamName} retains (first sequence ${s.first_seq}); resume from "beginning" or "now"`,
          })
        }
        return { seq: parsed.seq + 1, ...base }
      })

    /** `checkStart`: what `subscribe` would refuse, refused before any event is read. */
    const checkStart = (request: Address, from: string): Effect.Effect<void, BusError> =>
      checkAddress(request).pipe(
        Effect.flatMap((address) => resolveStart(address, from)),
        Effect.asVoid,
      )

    // Catch-up reads of the stream run a few at a time per process: a burst of subscribers
    // that all need one (a flood that dropped many slow readers) must not swamp the server's
    // API with requests that then time out.
    const catchUpPermits = Semaphore.makeUnsafe(catchUpConcurrency)
    /** The anchored filter of each head cursor in use, shared by its subscriptions (core). */
    const headFilters = Option.isSome(deps.store)
      ? sharedAnchoredFilters(deps.store.value, 500, "nats")
      : undefined

    /** The earliest start asked for by the subscriptions about to create an address's feed. */
    const wanted = new Map<string, number>()
    /** The logs of the feeds that exist now (for `stats`). */
    const logs = new Map<string, FeedLog>()
    const feeds: RcMap.RcMap<string, Feed, BusError> = yield* RcMap.make({
      lookup: (key: string): Effect.Effect<Feed, BusError, Scope.Scope> =>
        Effect.gen(function* () {
          const address = addressOf(key)
          const { last_seq } = yield* state
          const from = wanted.get(key)
          wanted.delete(key)
          // Start where the first subscribers need it when that is close to the stream's end:
          // the subscriptions of one burst (whose heads were read a moment before) then find
          // their start among the feed's recent items and read nothing. A start far back (a
          // replay) is left to that subscriber's own catch-up, so live readers do not wait.
          const startAfter =
            from !== undefined && from - 1 >= last_seq - feedStartWindow
              ? Math.min(from - 1, last_seq)
              : last_seq
          const feed = yield* runFeed(
            deps,
            address,
            subjectOf(deps.o.prefix, address),
            startAfter,
            // A failed feed is not handed to later subscriptions: they start a new one.
            () => RcMap.invalidate(feeds, key),
            RcMap.invalidate(feeds, key),
          )
          logs.set(key, feed.log)
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              if (logs.get(key) === feed.log) logs.delete(key)
            }),
          )
          return feed
        }),
    })

    /**
     * Reads the subject's messages in [from, upTo] from the stream by sequence and hands
     * each to `emit`. A short gap (a subscriber just behind the feed) costs a few direct
     * reads and no consumer; a longer one a temporary ordered consumer, deleted at once.
     */
    const catchUp = (
      address: Address,
      subject: string,
      from: number,
      upTo: number,
      emit: (items: ReadonlyArray<Item>) => Effect.Effect<void, BusError>,
    ): Effect.Effect<void, BusError> =>
      Effect.gen(function* () {
        let seq = from
        const place: CursorPlace = { address: addressTag(address), stream: deps.watch.current().id }
        const toItem = (data: Uint8Array, s: number, headers: MsgHdrs | undefined) =>
          Effect.exit(decodeMessage(data, s, address, headers, place)).pipe(
            Effect.flatMap(
              (decoded): Effect.Effect<Item> =>
                decoded._tag === "Success"
                  ? Effect.succeed({
                      pos: s,
                      event: decoded.value,
                      position: positionOfMessage(headers),
                      at: Date.parse(decoded.value.time),
                    })
                  : Effect.logWarning(
                      `nats: skipped malformed message ${subject}#${s}: ${String(Cause.squash(decoded.cause))}`,
                    ).pipe(Effect.as({ pos: s, event: undefined, position: undefined, at: 0 })),
            ),
          )
        const getNext = (s: number) =>
          retryWhileRetryable(
            Effect.tryPromise({
              // `next_by_subj` (2.9+): the first message of the subject at or after `seq`. The
              // client types only list it for direct gets; the stream API takes it too.
              try: () =>
                deps.jsm.streams.getMessage(deps.o.streamName, {
                  seq: s,
                  next_by_subj: subject,
                } as MsgRequest),
              catch: (e) => toBusError(e, `read ${subject} from ${s}`),
            }),
            `nats: catch-up read on ${subject}`,
          )
        for (let reads = 0; ; reads++) {
          if (seq > upTo) return
          const m = yield* getNext(seq)
          if (m === null || m.seq > upTo) return
          if (reads >= directReads) break
          yield* emit([yield* toItem(m.data, m.seq, m.header)])
          seq = m.seq + 1
        }
        // More than a few behind: page through a temporary ordered consumer from `seq` (a
        // message of the subject is known to be there, so the first page never waits).
        yield* retryWhileRetryable(
          Effect.scoped(
            Effect.gen(function* () {
              const consumer = yield* Effect.tryPromise({
                try: () =>
                  deps.js.consumers.get(deps.o.streamName, {
                    filter_subjects: subject,
                    inactive_threshold: 60_000,
                    deliver_policy: DeliverPolicy.StartSequence,
                    opt_start_seq: seq,
                  }),
                catch: (e) => toBusError(e, `create catch-up consumer on ${subject}`),
              })
              const messages = yield* Effect.acquireRelease(
                Effect.tryPromise({
                  try: () => consumer.consume({ max_messages: 256, expires: 5_000 }),
                  catch: (e) => toBusError(e, `catch up on ${subject}`),
                }),
                (messages) =>
                  Effect.sync(() => {
                    messages.stop()
                    consumer.delete().catch(() => {})
                  }),
              )
              const iterator = messages[Symbol.asyncIterator]()
              for (;;) {
                const next = yield* Effect.tryPromise({
                  try: () => iterator.next(),
                  catch: (e) => toBusError(e, `catch up on ${subject}`),
                }).pipe(
                  // Every wait is bounded: a read that stalls (messages removed under it) starts over.
                  Effect.timeoutOrElse({
                    duration: 15_000,
                    orElse: () =>
                      Effect.fail(toBusError(new Error("catch-up read timed out"), `catch up on ${subject}`)),
                  }),
                )
                if (next.done)
                  return yield* Effect.fail(toBusError(new Error("the consumer stopped"), subject))
                const m = next.value
                if (m.seq >= seq) {
                  yield* emit([yield* toItem(m.data, m.seq, m.headers)])
                  seq = m.seq + 1
                }
                if (m.seq >= upTo || m.info.pending === 0) return
              }
            }),
          ),
          `nats: catch-up on ${subject}`,
        )
      })

    /**
     * A subscriber's place in the address's pages after `from` (see the module comment):
     * what it delivered is one sequence, `last`; it is in the feed's log at `index`, or
     * reads the stream up to the feed's position first. Its filter (a head cursor's or a
     * flip cursor's, rare) is applied per page, or per item only where the page needs it.
     */
    const openCursor: OpenFeedCursor = (request, from) =>
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const subject = subjectOf(deps.o.prefix, address)
        const start = yield* resolveStart(address, from)
        const scope = yield* Effect.scope
        const key = keyOf(address)
        /** What it delivered: the last sequence handed on (or skipped), its filters, its last event (core's gate). */
        const filter =
          start.anchor !== undefined && headFilters !== undefined
            ? yield* headFilters(address, start.anchor)
            : undefined
        const gate = new PositionGate<number, Item>((x, y) => x - y, start.seq - 1, start.keep, filter)
        /** The stream generation `gate.last` counts in. */
        let generation = start.generation
        let feed: Feed | undefined
        let feedScope: Scope.Closeable | undefined
        /** Its place in the log (the log ends for it when the feed fails, or its stream is lost). */
        const place: LogPlace = { index: -1, ended: undefined }
        /** A catch-up read of the stream in progress, and the sequence it reads up to. */
        let catching:
          | { readonly queue: Queue.Queue<Item, BusError | Cause.Done>; readonly upTo: number }
          | undefined

        const poll = (): FeedPage | "wait" | "step" => {
          if (place.index < 0 || gate.held !== undefined || place.ended !== undefined) return "step"
          const f = feed!
          return pollLog(f.log, place, (events) => {
            const out = gate.page(f.meta(events), events)
            return out.length === 0 && gate.held !== undefined ? "step" : out
          })
        }

        /** The address's feed on the stream as it is now, held until the next one. */
        const useFeed = Effect.gen(function* () {
          if (feedScope !== undefined) yield* Scope.close(feedScope, Exit.void)
          feedScope = yield* Scope.fork(scope)
          wanted.set(key, Math.min(wanted.get(key) ?? Number.POSITIVE_INFINITY, gate.last + 1))
          feed = yield* RcMap.get(feeds, key).pipe(Scope.provide(feedScope))
          return feed
        })
        const leaveFeed = Effect.suspend(() => {
          feed = undefined
          place.index = -1
          const closing = feedScope
          feedScope = undefined
          return closing === undefined ? Effect.void : Scope.close(closing, Exit.void)
        })

        /**
         * The stream was lost under this subscription (streamWatch.ts). The new stream
         * gets the retained outbox again from the relay, each event with its outbox
         * position: read it from its start and skip what the outbox frontier of the last
         * event handed on covers. No gap, no duplicate; where that is impossible (no
         * frontier, no outbox, or the outbox pruned past it) the subscription ends with
         * `CursorInvalid`, never a silent skip.
         */
        const resume = Effect.gen(function* () {
          const lastEvent = gate.lastItem?.event
          const frontier = lastEvent !== undefined ? splitCursor(lastEvent.cursor).frontier : start.frontier
          const lostAt = lastEvent?.cursor ?? from
          generation = deps.watch.current().generation
          gate.filter = undefined
          if (frontier === "beginning") gate.keep = undefined
          else if (frontier === undefined || Option.isNone(deps.store)) {
            return yield* new CursorInvalid({
              cursor: lostAt,
              reason: "expired",
              message: `stream ${deps.o.streamName} was lost under a subscription of ${subject}, and its position ${lostAt} carries no outbox frontier to resume from on the new stream; resume from "beginning" or "now"`,
            })
          } else {
            // The outbox still holds what follows the frontier (its retention), or this fails.
            yield* deps.store.value.read(address, frontier, 1)
            gate.keep = notCoveredBy(deps.store.value, frontier)
          }
          gate.last = 0
          yield* Effect.logWarning(
            `nats: stream ${deps.o.streamName} was lost under a subscription of ${subject} (at ${lostAt}); it resumes on the new stream after outbox position ${frontier}`,
          )
        })

        /** Reads (last, upTo] of the stream in the background, into a bounded queue `step` takes from. */
        const startCatchUp = (upTo: number) =>
          Effect.gen(function* () {
            const queue = yield* Queue.bounded<Item, BusError | Cause.Done>(catchUpBuffer)
            const seen = generation
            yield* catchUpPermits
              .withPermit(
                catchUp(address, subject, gate.last + 1, upTo, (items) => Queue.offerAll(queue, items)),
              )
              .pipe(
                // A catch-up on a lost stream would retry for ever: stop it at the change.
                Effect.raceFirst(deps.watch.changedSince(seen)),
                Effect.andThen(Queue.end(queue)),
                Effect.catch((error: BusError) => Queue.fail(queue, error)),
                Effect.forkIn(scope),
              )
            catching = { queue, upTo }
          })

        const step: Effect.Effect<FeedPage | undefined, BusError> = Effect.suspend(() =>
          Effect.gen(function* () {
            if (gate.held !== undefined) {
              const events = yield* gate.admitHeld
              return events.length > 0 ? { events, live: place.index >= 0 } : undefined
            }
            if (place.ended !== undefined) {
              // Only a lost stream is resumed from; any other end of the feed ends the subscription.
              if (place.ended !== feed?.replaced) return yield* Effect.fail(place.ended)
              place.ended = undefined
              yield* leaveFeed
            }
            if (deps.watch.current().generation !== generation) {
              catching = undefined
              yield* leaveFeed
              yield* resume
            }
            if (catching !== undefined) {
              const taken = yield* Effect.exit(Queue.takeAll(catching.queue))
              if (taken._tag === "Success") {
                const events = gate.admit(taken.value)
                return events.length > 0 ? { events, live: false } : undefined
              }
              const error = Cause.squash(taken.cause)
              if (!Cause.isDone(error)) return yield* Effect.fail(error as BusError)
              // Read to the end: nothing of the subject up to `upTo` is left (or the stream
              // was lost, which the next step sees).
              if (deps.watch.current().generation === generation && catching.upTo > gate.last)
                gate.last = catching.upTo
              catching = undefined
              return undefined
            }
            const f = feed ?? (yield* useFeed)
            if (f.generation !== generation) {
              // The stream was just lost and this feed, of the old one, is about to leave the
              // map: wait for the new one rather than read the old stream's log.
              yield* leaveFeed
              yield* Effect.sleep(1)
              return undefined
            }
            if (f.log.failure !== undefined && f.log.failure !== f.replaced)
              return yield* Effect.fail(f.log.failure)
            // In the log from `last` on: no read. Otherwise read the stream up to where the
            // feed stands, then look again (the log has moved on meanwhile).
            const at = f.indexFor(gate.last + 1)
            if (at !== undefined) place.index = at
            else yield* startCatchUp(f.position())
            return undefined
          }),
        )

        return {
          start: start.head ?? from,
          poll,
          step,
          onAppend: (wake: () => void) => feed!.log.onAppend(wake),
        } satisfies FeedCursor
      })

    const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
      feedStream(openCursor(request, request.from ?? "now"))

    const stats = () => feedLogStats(logs)

    return { head, subscribe, checkStart, openCursor, stats }
  })

/** Why a request still waiting when the transport closes fails (`BusClosed`). */
const closing = "nats: the transport is closing"

/** Catch-ups reading the stream at once, per process. */
const catchUpConcurrency = 8

/** How far back (in stream sequences) a new feed may start to serve its first subscribers from memory. */
const feedStartWindow = 10_000

/** Items a catch-up read holds ahead of its reader (it waits while the reader does not pull). */
const catchUpBuffer = 256

/** Single reads of a catch-up before it pages through a temporary consumer instead. */
const directReads = 16

const keyOf = addressKey
const addressOf = addressOfKey
