import {
  type Address,
  BusClosed,
  type BusError,
  CursorInvalid,
  checkAddress,
  type DeliveredEvent,
  flipCursorExpired,
  notCoveredBy,
  type OutboxStore,
  outboxCursorOf,
  type SubscribeRequest,
} from "@bus/core"
import { DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream"
import { Cause, Effect, Option, Queue, Stream } from "effect"
import type { ConnectionWatch } from "./connection.js"
import { encodeCursor, encodeHeadCursor, parseCursor } from "./cursor.js"
import { toBusError } from "./errors.js"
import type { ResolvedOptions } from "./options.js"
import { subjectOf } from "./subjects.js"
import { decodeMessage, positionOfMessage, retryWhileRetryable } from "./wire.js"

/**
 * Subscriptions: an ordered (ephemeral, unacknowledged) JetStream consumer filtered to
 * the address's subject, started right after the cursor. When the consumer breaks (the
 * server restarts, the connection drops, a node dies) it is created again from the last
 * delivered sequence, for as long as the subscription is consumed.
 *
 * @module
 */

/** What the subscription side needs from the transport. */
export interface SubscribeDeps {
  /** For ordered consumers: a short request timeout, so a retry comes soon after an election. */
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  readonly o: ResolvedOptions
  readonly store: Option.Option<OutboxStore["Service"]>
  readonly conn: ConnectionWatch
}

/** Where the ordered consumer starts. */
type Start = { readonly seq: number }

/**
 * Decides, per stream message, whether a subscription delivers it: from a head cursor, or
 * from an outbox cursor after a flip (by the outbox position the relay stored with it).
 */
type Classify = (event: DeliveredEvent, position: string | undefined) => Effect.Effect<boolean, BusError>

const streamState = (deps: SubscribeDeps) =>
  retryWhileRetryable(
    Effect.tryPromise({
      try: () => deps.jsm.streams.info(deps.o.streamName),
      catch: (e) => toBusError(e, `stream info ${deps.o.streamName}`),
    }),
    "stream info",
  ).pipe(Effect.map((info) => info.state))

/**
 * `head`: the stream's last sequence and, with an outbox, the outbox's head taken right
 * after it. The relay sends a row only after it committed, so every event committed
 * after that outbox head lands above that sequence: a subscription from the cursor
 * starts right after it and misses nothing committed later.
 */
const makeHead =
  (deps: SubscribeDeps) =>
  (request: Address): Effect.Effect<string, BusError> =>
    Effect.gen(function* () {
      const address = yield* checkAddress(request)
      const { last_seq } = yield* streamState(deps)
      if (Option.isNone(deps.store)) return encodeCursor(last_seq)
      const outboxHead = yield* retryWhileRetryable(deps.store.value.head(address), "outbox head")
      return encodeHeadCursor(last_seq, Date.now(), outboxHead)
    })

/**
 * A subscription from a head cursor: above its sequence the stream may still bring
 * events committed before the outbox head (the relay's backlog when the head was taken).
 * An event published after the head was taken committed after it: delivered. An older
 * one is delivered only if the outbox has it after the head (read from there on, as far
 * as needed, keeping only such older events). If the outbox cannot answer for good (the
 * head was pruned), events are delivered rather than risk losing one.
 */
const committedAfterHead = (
  store: OutboxStore["Service"],
  address: Address,
  anchor: { readonly at: number; readonly outboxHead: string },
): Classify => {
  let cursor = anchor.outboxHead
  let unreadable = false
  const after = new Set<string>()
  const scan = retryWhileRetryable(
    Effect.gen(function* () {
      for (;;) {
        const page = yield* store.read(address, cursor, 500)
        for (const e of page.events) if (!(Date.parse(e.time) > anchor.at)) after.add(e.id)
        cursor = page.next
        if (!page.more) return
      }
    }),
    "outbox read for a head cursor",
  ).pipe(
    Effect.catch((e: BusError) =>
      Effect.logWarning(
        `nats: cannot tell events committed before a head cursor apart (${e.message}); delivering them`,
      ).pipe(
        Effect.andThen(
          Effect.sync(() => {
            unreadable = true
          }),
        ),
      ),
    ),
  )
  return (event) =>
    Effect.suspend(() => {
      if (unreadable || Date.parse(event.time) > anchor.at || after.delete(event.id))
        return Effect.succeed(true)
      return scan.pipe(Effect.map(() => unreadable || after.delete(event.id)))
    })
}

/** Resolves `from` to a start sequence (and, for a head cursor over an outbox, a classifier). */
const resolveStart = (
  deps: SubscribeDeps,
  address: Address,
  from: string,
  head: (address: Address) => Effect.Effect<string, BusError>,
): Effect.Effect<{ readonly start: Start; readonly classify?: Classify }, BusError> =>
  Effect.gen(function* () {
    if (from === "beginning") return { start: { seq: 1 } }
    // After a flip: an outbox cursor (or another broker's cursor carrying its outbox frontier).
    // The stream holds every event the relay forwarded with its outbox position: read it from
    // the start and skip exactly what the cursor covers.
    const outboxCursor =
      from === "now" || !(parseCursor(from) instanceof CursorInvalid)
        ? undefined
        : outboxCursorOf(deps.store, from)
    if (outboxCursor !== undefined && Option.isSome(deps.store)) {
      const state = yield* streamState(deps)
      if (state.first_seq > 1 || state.num_deleted > 0) {
        return yield* flipCursorExpired(from, `stream ${deps.o.streamName}`)
      }
      const keep = notCoveredBy(deps.store.value, outboxCursor)
      return { start: { seq: 1 }, classify: (_event, position) => Effect.succeed(keep(position)) }
    }
    const cursor = from === "now" ? yield* head(address) : from
    const parsed = parseCursor(cursor)
    if (parsed instanceof CursorInvalid) return yield* parsed
    const classify =
      parsed.anchor !== undefined && Option.isSome(deps.store)
        ? committedAfterHead(deps.store.value, address, parsed.anchor)
        : undefined
    if (from === "now") return { start: { seq: parsed.seq + 1 }, ...(classify ? { classify } : {}) }
    const state = yield* streamState(deps)
    if (parsed.seq > state.last_seq) {
      return yield* new CursorInvalid({
        cursor: from,
        reason: "foreign",
        message: `cursor ${from} is ahead of stream ${deps.o.streamName} (last sequence ${state.last_seq}): it comes from another stream, or the stream was recreated`,
      })
    }
    if (parsed.seq + 1 < state.first_seq) {
      return yield* new CursorInvalid({
        cursor: from,
        reason: "expired",
        message: `cursor ${from} is older than the events stream ${deps.o.streamName} retains (first sequence ${state.first_seq}); resume from "beginning" or "now"`,
      })
    }
    return { start: { seq: parsed.seq + 1 }, ...(classify ? { classify } : {}) }
  })

/**
 * Delivers the subject's messages from `start`, recreating the ordered consumer from
 * the last delivered sequence whenever it breaks.
 */
const orderedMessages = (
  deps: SubscribeDeps,
  address: Address,
  subject: string,
  first: Start,
  classify: Classify | undefined,
): Stream.Stream<DeliveredEvent, BusError> =>
  Stream.callback<DeliveredEvent, BusError>(
    (queue) =>
      Effect.gen(function* () {
        let start: Start = first
        let failures = 0
        const onMessage = (m: JsMsg) =>
          Effect.gen(function* () {
            const seq = m.seq
            start = { seq: seq + 1 }
            const decoded = yield* Effect.exit(decodeMessage(m.data, seq, address, m.headers))
            if (decoded._tag === "Failure") {
              const reason = Cause.squash(decoded.cause)
              yield* Effect.logWarning(`nats: skipped malformed message ${subject}#${seq}: ${String(reason)}`)
              return
            }
            if (classify !== undefined && !(yield* classify(decoded.value, positionOfMessage(m.headers))))
              return
            failures = 0
            yield* Queue.offer(queue, decoded.value)
          })
        const once = Effect.scoped(
          Effect.gen(function* () {
            const options = { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start.seq }
            const consumer = yield* Effect.tryPromise({
              try: () =>
                deps.js.consumers.get(deps.o.streamName, {
                  filter_subjects: subject,
                  inactive_threshold: 120_000,
                  ...options,
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
            const iterator = messages[Symbol.asyncIterator]()
            for (;;) {
              const next = yield* Effect.tryPromise({
                try: () => iterator.next(),
                catch: (e) => toBusError(e, `subscription on ${subject}`),
              })
              if (next.done) {
                return yield* Effect.fail(
                  toBusError(new Error("the consumer stopped"), `subscription on ${subject}`),
                )
              }
              yield* onMessage(next.value)
            }
          }),
        )
        for (;;) {
          const exit = yield* Effect.exit(once)
          if (exit._tag === "Success") continue
          const error = Cause.squash(exit.cause)
          const busError = toBusError(error, `subscription on ${subject}`)
          if (!busError.retryable) return yield* Effect.fail(busError)
          if (deps.conn.closed()) {
            return yield* new BusClosed({
              message: `nats: the connection is closed; subscription on ${subject} ends`,
            })
          }
          failures++
          if (failures > 1)
            yield* Effect.logWarning(`nats: subscription on ${subject} restarts: ${busError.message}`)
          yield* Effect.sleep(Math.min(5_000, 50 * 2 ** Math.min(failures, 7)))
        }
      }),
    { bufferSize: 256, strategy: "suspend" },
  )

/** `head` and `subscribe` of the NATS transport. */
export const makeSubscribe = (deps: SubscribeDeps) => {
  const head = makeHead(deps)
  const subscribe = (request: SubscribeRequest): Stream.Stream<DeliveredEvent, BusError> =>
    Stream.unwrap(
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const subject = subjectOf(deps.o.prefix, address)
        const { start, classify } = yield* resolveStart(deps, address, request.from ?? "now", head)
        return orderedMessages(deps, address, subject, start, classify)
      }),
    )
  return { head, subscribe }
}
