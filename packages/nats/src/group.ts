import { BusClosed, type BusError, ConfigError, type DeliveredEvent } from "@bus/core"
import {
  addressTag,
  checkAddress,
  type Delivery,
  type GroupRequest,
  retryWhileRetryable,
  validateName,
} from "@bus/core/adapter"
import {
  AckPolicy,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  ReplayPolicy,
} from "@nats-io/jetstream"
import { nanos } from "@nats-io/transport-node"
import { Cause, Effect, Queue, Stream } from "effect"
import type { ConnectionWatch } from "./connection.js"
import { toBusError } from "./errors.js"
import { deadLetterSubjectOf, durableName, subjectOf } from "./names.js"
import type { ResolvedOptions } from "./options.js"
import type { StreamWatch } from "./streamWatch.js"
import { decodeMessage, positionOfMessage } from "./wire.js"

/**
 * Consumer groups: one durable JetStream consumer per (tenant, channel, group) with
 * explicit acks. Each member pulls only as many messages as it has free handler slots
 * (`maxInFlight`), so nothing waits in a prefetch buffer while its ack timer runs, and
 * every delivery a member holds is kept alive with in-progress acks until it is settled.
 * A member that stops hands its unsettled deliveries back at once (nak without delay).
 *
 * @module
 */

/** What the group side needs from the transport. */
export interface GroupDeps {
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  readonly o: ResolvedOptions
  readonly maxPayloadBytes: number
  readonly conn: ConnectionWatch
  readonly watch: StreamWatch
}

/** Longest dead-letter reason kept, in characters. */
const maxReasonLength = 8_192

const isConsumerNotFound = (error: unknown): boolean =>
  error instanceof Error &&
  (error.name === "ConsumerNotFoundError" || /consumer not found/i.test(error.message))

/** Creates the group's durable consumer, or brings an existing one to the configured settings. */
const ensureConsumer = (
  deps: GroupDeps,
  spec: {
    readonly durable: string
    readonly subject: string
    readonly description: string
    readonly maxInFlight: number
  },
): Effect.Effect<Consumer, BusError> =>
  Effect.gen(function* () {
    const { o, jsm, js } = deps
    const existing = yield* Effect.tryPromise({
      try: () => jsm.consumers.info(o.streamName, spec.durable),
      catch: (e) => e,
    }).pipe(
      Effect.map((ci): ConsumerInfo | undefined => ci),
      Effect.catch((e) =>
        isConsumerNotFound(e)
          ? Effect.succeed(undefined)
          : Effect.fail(toBusError(e, `consumer info ${spec.durable}`)),
      ),
    )
    const maxAckPending =
      o.maxAckPending ?? Math.max(spec.maxInFlight, existing?.config.max_ack_pending ?? spec.maxInFlight)
    const settings = {
      ack_wait: nanos(o.ackWaitMs),
      max_deliver: o.maxDeliver,
      max_ack_pending: maxAckPending,
    }
    if (existing !== undefined) {
      if (existing.config.filter_subject !== spec.subject) {
        return yield* new ConfigError({
          message: `nats: consumer ${spec.durable} on ${o.streamName} filters ${existing.config.filter_subject ?? "nothing"}, not ${spec.subject}; delete it or use another group name`,
        })
      }
      const c = existing.config
      if (
        c.ack_wait === settings.ack_wait &&
        c.max_deliver === settings.max_deliver &&
        c.max_ack_pending === settings.max_ack_pending
      ) {
        return js.consumers.getConsumerFromInfo(existing)
      }
      const updated = yield* Effect.tryPromise({
        try: () => jsm.consumers.update(o.streamName, spec.durable, settings),
        catch: (e) => toBusError(e, `update consumer ${spec.durable}`),
      })
      return js.consumers.getConsumerFromInfo(updated)
    }
    const config: Partial<ConsumerConfig> = {
      durable_name: spec.durable,
      description: spec.description,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      replay_policy: ReplayPolicy.Instant,
      filter_subject: spec.subject,
      ...settings,
    }
    const created = yield* Effect.tryPromise({
      try: () => jsm.consumers.add(o.streamName, config),
      catch: (e) => toBusError(e, `create consumer ${spec.durable}`),
    })
    return js.consumers.getConsumerFromInfo(created)
  })

/** One message a member holds until it is settled (acked, nak'ed, terminated). */
interface Held {
  readonly msg: JsMsg
  settled: boolean
}

/**
 * Reads one pull's messages. Each message is registered with the member the moment it
 * arrives (not when the reading fiber gets to it), so a member that stops can hand back
 * every message that reached it instead of leaving it to its ack timer.
 */
class Puller {
  readonly #messages: ConsumerMessages
  readonly #iterator: AsyncIterator<JsMsg>
  readonly #register: (msg: JsMsg) => Held
  #pending: Promise<Held | undefined> | undefined
  constructor(messages: ConsumerMessages, register: (msg: JsMsg) => Held) {
    this.#messages = messages
    this.#iterator = messages[Symbol.asyncIterator]()
    this.#register = register
  }
  /** The next message (registered), or undefined when the pull is over; call `taken` once used. */
  next(): Promise<Held | undefined> {
    this.#pending ??= this.#iterator.next().then((r) => (r.done ? undefined : this.#register(r.value)))
    return this.#pending
  }
  /** The message `next` gave is in the caller's hands. */
  taken(): void {
    this.#pending = undefined
  }
  /** Ends the pull early: `next` then gives undefined once what already arrived is taken. */
  end(): void {
    this.#messages.stop()
  }
  /** Stops the pull; returns the messages that reached it but were not taken. */
  async stop(): Promise<Array<Held>> {
    this.#messages.stop()
    const untaken: Array<Held> = []
    for (;;) {
      const h = await withTimeout(this.next(), 1_000).catch(() => undefined)
      this.taken()
      if (h === undefined) return untaken
      untaken.push(h)
    }
  }
}

/** `promise`, or undefined after `ms`; the timer never outlives the race. */
const withTimeout = <A>(promise: Promise<A>, ms: number): Promise<A | undefined> => {
  let timer: ReturnType<typeof setTimeout> | undefined
  return Promise.race([
    promise,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

/** `group` of the NATS transport. */
export const makeGroup =
  (deps: GroupDeps) =>
  (request: GroupRequest): Stream.Stream<Delivery, BusError> =>
    Stream.unwrap(
      Effect.gen(function* () {
        const { o } = deps
        const address = yield* checkAddress(request)
        const group = validateName("group", request.group)
        if (typeof group !== "string") return yield* group
        const subject = subjectOf(o.prefix, address)
        const durable = durableName(o.streamName, subject, group)
        const maxInFlight = Math.max(1, Math.floor(request.maxInFlight))
        const spec = {
          durable,
          subject,
          maxInFlight,
          description: `@bus group ${group} of ${address.tenant}/${address.channel}`,
        }
        let consumer = yield* retryWhileRetryable(ensureConsumer(deps, spec), `nats: consumer ${durable}`)
        /** The stream generation `consumer` was made on: a lost stream took the consumer with it. */
        let generation = deps.watch.current().generation
        const tag = addressTag(address)

        const deliveries = yield* Queue.unbounded<Delivery, BusError | Cause.Done>()
        const waker = yield* Queue.dropping<void>(1)
        const held = new Set<Held>()
        let free = maxInFlight

        const settle = (h: Held, action: (m: JsMsg) => void) =>
          Effect.sync(() => {
            if (h.settled) return
            h.settled = true
            held.delete(h)
            free++
            try {
              action(h.msg)
            } catch {
              // The connection is closing: the server redelivers after ack_wait.
            }
          }).pipe(Effect.andThen(Queue.offer(waker, undefined)), Effect.asVoid)

        // Registered before the fibers below, so it runs after they stopped: every delivery
        // still held goes back to the group at once instead of after ack_wait.
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            for (const h of [...held]) {
              h.settled = true
              held.delete(h)
              try {
                h.msg.nak()
              } catch {
                // Connection already closed: redelivered after ack_wait.
              }
            }
          }),
        )

        const deadLetter = (h: Held, event: DeliveredEvent, attempt: number, reason: string) =>
          Effect.gen(function* () {
            const at = new Date().toISOString()
            const short = reason.length > maxReasonLength ? `${reason.slice(0, maxReasonLength)}…` : reason
            const record = {
              event,
              reason: short,
              source: group,
              attempts: attempt,
              at,
              streamSeq: h.msg.seq,
            }
            let body = JSON.stringify(record)
            if (Buffer.byteLength(body, "utf8") > deps.maxPayloadBytes) {
              // Too big with the event inside: keep everything but `data`, which stays in the event stream at streamSeq.
              body = JSON.stringify({ ...record, event: { ...event, data: null }, dataOmitted: true })
            }
            yield* retryWhileRetryable(
              Effect.tryPromise({
                try: () =>
                  deps.js.publish(deadLetterSubjectOf(o.prefix, address), body, {
                    msgID: `${event.id}.${durable}`,
                    timeout: o.requestTimeoutMs,
                  }),
                catch: (e) => toBusError(e, `dead-letter ${event.id}`),
              }),
              `dead-letter ${event.id}`,
            )
            yield* settle(h, (m) => m.term())
          })

        const toDelivery = (h: Held, event: DeliveredEvent): Delivery => {
          const attempt = h.msg.info.deliveryCount
          return {
            event,
            attempt,
            // The ack goes out ahead of the member's next pull on the same connection, so the
            // server has it before it hands out the next event. A lost ack means one redelivery
            // after ack_wait, which the consumer drops by id.
            ack: Effect.suspend(() => settle(h, (m) => m.ack())),
            retry: (delayMs) =>
              Effect.suspend(() => {
                if (h.settled) return Effect.void
                if (o.maxDeliver > 0 && attempt >= o.maxDeliver) {
                  return deadLetter(h, event, attempt, `max_deliver (${o.maxDeliver}) reached; retry refused`)
                }
                return settle(h, (m) => m.nak(Math.max(0, Math.floor(delayMs))))
              }),
            deadLetter: (reason) =>
              Effect.suspend(() => (h.settled ? Effect.void : deadLetter(h, event, attempt, reason))),
            inProgress: Effect.sync(() => {
              if (!h.settled) h.msg.working()
            }),
          }
        }

        const onMessage = (h: Held) =>
          Effect.gen(function* () {
            const decoded = yield* Effect.exit(
              decodeMessage(h.msg.data, h.msg.seq, address, h.msg.headers, {
                address: tag,
                stream: deps.watch.current().id,
              }),
            )
            if (decoded._tag === "Failure") {
              yield* Effect.logWarning(
                `nats: group ${group} terminated malformed message ${subject}#${h.msg.seq}: ${String(Cause.squash(decoded.cause))}`,
              )
              return yield* settle(h, (m) => m.term())
            }
            yield* Queue.offer(deliveries, {
              ...toDelivery(h, decoded.value),
              position: positionOfMessage(h.msg.headers),
            })
          })

        /** One pull of up to `n` messages; permits it did not use are returned when it ends. */
        const pull = (n: number) =>
          Effect.gen(function* () {
            let received = 0
            const register = (msg: JsMsg): Held => {
              received++
              const h: Held = { msg, settled: false }
              held.add(h)
              return h
            }
            yield* Effect.addFinalizer(() =>
              Effect.sync(() => {
                free += n - received
              }),
            )
            const puller = yield* Effect.acquireRelease(
              Effect.tryPromise({
                try: () => consumer.fetch({ max_messages: n, expires: o.pullExpiresMs }),
                catch: (e) => toBusError(e, `pull ${durable}`),
              }).pipe(Effect.map((messages) => new Puller(messages, register))),
              (puller) =>
                Effect.promise(() => puller.stop()).pipe(
                  Effect.flatMap((untaken) => Effect.forEach(untaken, (h) => settle(h, (m) => m.nak()))),
                ),
            )
            // The pull the server held for the old connection is gone after a reconnect: pull again now.
            yield* deps.conn.nextReconnect.pipe(
              Effect.andThen(Effect.sync(() => puller.end())),
              Effect.forkScoped,
            )
            // So is the whole consumer when the stream was lost: end the pull, the loop makes it again.
            yield* deps.watch
              .changedSince(generation)
              .pipe(Effect.andThen(Effect.sync(() => puller.end())), Effect.forkScoped)
            for (;;) {
              const h = yield* Effect.tryPromise({
                try: () => puller.next(),
                catch: (e) => toBusError(e, `pull ${durable}`),
              })
              puller.taken()
              if (h === undefined) return received
              yield* onMessage(h)
            }
          }).pipe(Effect.scoped)

        const heartbeatMs = Math.max(250, Math.floor(o.ackWaitMs / 3))
        yield* Effect.sync(() => {
          for (const h of held) {
            try {
              h.msg.working()
            } catch {
              // reconnecting: the next beat or a redelivery covers it
            }
          }
        }).pipe(Effect.delay(heartbeatMs), Effect.forever, Effect.forkScoped)

        // One pull per turn; a failed turn is retried on core's schedule (its count starts
        // again after every turn that went through).
        let reensure = false
        const turn = Effect.gen(function* () {
          while (free <= 0) yield* Queue.take(waker)
          if (deps.watch.current().generation !== generation) {
            // The stream was lost (streamWatch.ts): the durable consumer went with it. The one
            // made on the new stream delivers what the relay resends from the outbox; the
            // consume loop skips what the group had handled (its inbox and window).
            generation = deps.watch.current().generation
            yield* Effect.logWarning(
              `nats: group ${group} on ${subject}: the stream was lost; its consumer is made again on the new stream`,
            )
            consumer = yield* retryWhileRetryable(ensureConsumer(deps, spec), `nats: consumer ${durable}`)
          }
          if (reensure) {
            // The consumer may be gone (deleted, or lost with a server's state): make sure it exists.
            consumer = yield* retryWhileRetryable(ensureConsumer(deps, spec), `nats: consumer ${durable}`)
            reensure = false
          }
          const n = free
          free = 0
          const started = Date.now()
          const exit = yield* Effect.exit(pull(n))
          if (exit._tag === "Success") {
            // A pull that ended at once with nothing (cut short by a reconnect, or a server
            // status) is renewed after a breath rather than in a tight loop.
            if (exit.value === 0 && Date.now() - started < 100) yield* Effect.sleep(100)
            return
          }
          const error = toBusError(Cause.squash(exit.cause), `group ${group} on ${subject}`)
          if (deps.conn.closed()) {
            return yield* new BusClosed({ message: `nats: the connection is closed; group ${group} ends` })
          }
          if (!error.retryable) return yield* Effect.fail(error)
          // A missing consumer or stream may be a lost stream: have it checked now, not at the next tick.
          yield* deps.watch.check(`group ${group}: ${error.message}`)
          reensure = true
          return yield* Effect.fail(error)
        })
        yield* Effect.forever(retryWhileRetryable(turn, `nats: group ${group} on ${subject}`)).pipe(
          Effect.catchCause((cause) => Queue.failCause(deliveries, cause)),
          Effect.forkScoped,
        )

        return Stream.fromQueue(deliveries)
      }),
    )
