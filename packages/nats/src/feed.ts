import { BusClosed, type BusError, type DeliveredEvent } from "@bus/core"
import { type Address, addressTag } from "@bus/core/adapter"
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream"
import { Cause, Deferred, Effect, Exit, Fiber } from "effect"
import { toBusError } from "./errors.js"
import type { SubscribeDeps } from "./subscribe.js"
import { decodeMessage, positionOfMessage } from "./wire.js"

/**
 * The shared live feed of one address in one process: one ordered JetStream consumer
 * reads the address's subject, each message is decoded once, and the decoded batch is
 * handed to every local subscriber of that address (a push of a shared array into its
 * buffer). 10,000 subscribers of one channel cost one consumer on the server and one
 * decode per event here.
 *
 * Positions are stream sequences, which only grow along a subject: the feed's
 * `position` is the sequence up to which every message of the subject has been handed
 * out. A subscriber that joins gets every later batch, and reads what lies between its
 * own cursor and that position itself (catch-up, see `subscribe.ts`); it drops anything
 * at or below the last sequence it delivered, so the seam between the two has no gap and
 * no duplicate without a set of ids.
 *
 * Each subscriber's buffer is bounded (`subscriberBuffer` events): a subscriber that lets
 * it fill up is removed from the feed, its buffer is released at once, and it resumes
 * from its own cursor when it reads again. One slow reader never holds the feed (or the
 * others) back and never grows memory without bound.
 *
 * A feed reads one stream, as `streamWatch.ts` knows it. When that stream is lost (deleted,
 * or gone with the server's store), the feed ends and tells each member "replaced": the
 * member resumes on the new stream by outbox position (`subscribe.ts`).
 *
 * @module
 */

/** One stream message of the feed's subject. */
export interface Item {
  readonly seq: number
  /** The decoded event; undefined for a malformed message (skipped, but it still moves positions). */
  readonly event: DeliveredEvent | undefined
  /** The outbox position the relay stored with it (cursors across a flip). */
  readonly position: string | undefined
  /** `event.time` in ms, parsed once for every subscriber's "now" filter. */
  readonly at: number
}

/** One subscriber's place in a feed. */
export interface Member {
  /** Batches handed over and not read yet (shared arrays, never copied). */
  batches: Array<ReadonlyArray<Item>>
  /** Items in `batches`. */
  buffered: number
  /** Set when the buffer overflowed: the member is out of the feed and must resume from its cursor. */
  dropped: boolean
  /** Set when the feed failed for good. */
  failure: BusError | undefined
  /** Set when the feed's stream was lost: the member resumes on the new one. */
  replaced: boolean
  /** Completed when something arrives while the member waits. */
  wake: Deferred.Deferred<void> | undefined
}

/** What a member gets when it joins. */
export interface Joined {
  /** Every message of the subject up to here has been handed out before the member joined. */
  readonly upTo: number
  /**
   * The items after the member's cursor up to `upTo`, when the feed still holds all of
   * them in memory (recent items); undefined when the member must read them from the stream.
   */
  readonly recent: ReadonlyArray<Item> | undefined
}

export interface Feed {
  /** Adds `member` to the feed; `from` is the first sequence it still needs. */
  readonly join: (member: Member, from: number) => Joined | BusError | "replaced"
  /** Removes `member` (idempotent). */
  readonly leave: (member: Member) => void
  /** Members in the feed (for tests and metrics). */
  readonly size: () => number
}

export const newMember = (): Member => ({
  batches: [],
  buffered: 0,
  dropped: false,
  failure: undefined,
  replaced: false,
  wake: undefined,
})

const wake = (member: Member): void => {
  const w = member.wake
  if (w !== undefined) {
    member.wake = undefined
    Deferred.doneUnsafe(w, Exit.void)
  }
}

/**
 * Waits until the member has batches, was dropped or the feed failed, and takes what is
 * there. Returns "dropped" once after an overflow.
 */
export const take = (
  member: Member,
): Effect.Effect<ReadonlyArray<ReadonlyArray<Item>> | "dropped" | "replaced", BusError> =>
  Effect.suspend(() => {
    if (member.batches.length > 0) {
      const batches = member.batches
      member.batches = []
      member.buffered = 0
      return Effect.succeed(batches)
    }
    if (member.replaced) return Effect.succeed("replaced" as const)
    if (member.failure !== undefined) return Effect.fail(member.failure)
    if (member.dropped) return Effect.succeed("dropped" as const)
    const w = Deferred.makeUnsafe<void>()
    member.wake = w
    return Deferred.await(w).pipe(Effect.andThen(take(member)))
  })

/** Recent items kept per feed, so that a subscriber joining just behind the feed needs no read. */
const recentItems = 512

/**
 * Runs the feed of `address` for the life of the calling scope. `startAfter` is the
 * stream sequence the feed starts after (the stream's last sequence when it was made).
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
    let replaced = false
    const members = new Set<Member>()
    const cap = deps.o.subscriberBuffer
    /** Every message of the subject up to here has been handed out. */
    let position = startAfter
    /** Last sequence received from the consumer (handed out or waiting in `pending`). */
    let received = startAfter
    let pending: Array<Item> = []
    /** The last items handed out, oldest first; they cover every message from `recentFloor` to `position`. */
    const recent: Array<Item> = []
    let recentFloor = startAfter + 1
    let failure: BusError | undefined

    const flush = () => {
      if (pending.length === 0) return
      const batch = pending
      pending = []
      position = batch[batch.length - 1]!.seq
      for (const item of batch) {
        if (item.event === undefined) continue
        recent.push(item)
      }
      if (recent.length > recentItems) {
        const evicted = recent.splice(0, recent.length - recentItems)
        recentFloor = evicted[evicted.length - 1]!.seq + 1
      }
      const delivered = batch.filter((i) => i.event !== undefined)
      if (delivered.length === 0) return
      // Over a copy: waking a member runs it at once, and a dropped one may join again
      // (at the new position) before this loop ends.
      for (const member of Array.from(members)) {
        // A member with an empty buffer always takes the batch (it is shared: no extra
        // memory), so a burst larger than the bound drops nobody who keeps up.
        if (member.buffered > 0 && member.buffered + delivered.length > cap) {
          // Too far behind: out of the feed, its buffer released now; it resumes from its
          // own cursor (a read of the stream) when it reads again.
          members.delete(member)
          member.dropped = true
          member.batches = []
          member.buffered = 0
        } else {
          member.batches.push(delivered)
          member.buffered += delivered.length
        }
        wake(member)
      }
    }

    const feed: Feed = {
      join: (member, from) => {
        if (replaced) return "replaced"
        if (failure !== undefined) return failure
        members.add(member)
        if (from < recentFloor) return { upTo: position, recent: undefined }
        // Binary search would do; joins are rare next to deliveries and the list is short.
        let i = recent.length
        while (i > 0 && recent[i - 1]!.seq >= from) i--
        return { upTo: position, recent: recent.slice(i) }
      },
      leave: (member) => {
        members.delete(member)
      },
      size: () => members.size,
    }

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
          pending.push({ seq, event: undefined, position: undefined, at: 0 })
          return
        }
        const event = decoded.value
        pending.push({ seq, event, position: positionOfMessage(m.headers), at: Date.parse(event.time) })
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
          // One hand-over per burst, from this fiber: the messages the client has already
          // buffered arrive before the event loop turns and join the batch; then it goes.
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

    const loop = Effect.gen(function* () {
      let failures = 0
      for (;;) {
        const before = received
        const exit = yield* Effect.exit(once)
        flush()
        if (received > before) failures = 0
        if (exit._tag === "Success") continue
        const busError = toBusError(Cause.squash(exit.cause), `subscription feed on ${subject}`)
        if (!busError.retryable) return yield* Effect.fail(busError)
        if (deps.conn.closed()) {
          return yield* new BusClosed({
            message: `nats: the connection is closed; subscriptions on ${subject} end`,
          })
        }
        failures++
        // A consumer that cannot be made may mean a lost stream: have it checked now.
        yield* deps.watch.check(`feed on ${subject}: ${busError.message}`)
        if (failures > 1) yield* Effect.logWarning(`nats: feed on ${subject} restarts: ${busError.message}`)
        yield* Effect.sleep(Math.min(5_000, 50 * 2 ** Math.min(failures, 7)))
      }
    })

    const running = yield* loop.pipe(
      Effect.catch((error: BusError) =>
        Effect.suspend(() => {
          failure = error
          for (const member of members) {
            member.failure = error
            wake(member)
          }
          members.clear()
          return onFailure(error)
        }),
      ),
      Effect.forkScoped,
    )
    yield* deps.watch.changedSince(generation).pipe(
      Effect.andThen(
        // Out of the map first, so that a member told "replaced" finds a new feed.
        onReplaced.pipe(
          Effect.andThen(
            Effect.sync(() => {
              replaced = true
              for (const member of members) {
                member.replaced = true
                wake(member)
              }
              members.clear()
            }),
          ),
        ),
      ),
      Effect.andThen(Fiber.interrupt(running)),
      Effect.forkScoped,
    )
    return feed
  })
