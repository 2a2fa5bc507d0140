import { Cause, Context, Effect, Exit, Fiber, Layer, Metric, Option, Stream } from "effect"
import type { StartPosition } from "../contracts/cursor.js"
import { type Address, type GroupKey, GroupStore, OutboxReader } from "../contracts/outboxStore.js"
import type { Delivery } from "../contracts/transport.js"
import { Transport } from "../contracts/transport.js"
import {
  type ChannelEvent,
  type ChannelRef,
  channelName,
  checkDelivered,
  checkPage,
  invalidEventWarning,
  isChannel,
  type OnInvalidEvent,
} from "../model/channel.js"
import type { DeliveredEvent } from "../model/envelope.js"
import { type BusError, ConfigError, type InvalidEvent } from "../model/errors.js"
import { allTenants, checkAddress, checkName } from "../model/name.js"
import {
  deadLettered,
  deliveryLag,
  eventsDelivered,
  handlerRetries,
  inboxSkipped,
  withMetricAttributes,
} from "../observability/metrics.js"
import { ageOf, messageAttributes, messagingAttributes, producerLinks } from "../observability/telemetry.js"
import { consumeAllTenants } from "./allTenants.js"
import { backoffDelay, cappedBackoff } from "./backoff.js"

/**
 * Consuming: `subscribe` for a stream of events from a cursor, `consume` for a consumer
 * group with acknowledgements, bounded retries with backoff and a dead-letter place.
 *
 * Every group keeps an *inbox* of the event ids it handled, in the outbox store, so a
 * group never runs its handler twice for one event when it moves between transports (a
 * flip) or when an acknowledgement was lost. On the outbox transports the transport reads
 * and writes the inbox itself (one lookup per catch-up page, the write in the same
 * statement as the position). On brokers this loop does it: it records each handled id
 * before the broker's ack, and looks an event up only when it could have been handled
 * before this member started (its outbox position is older than the member's start, or the
 * broker redelivers it); events the group's last outbox cursor covers are skipped without
 * a lookup. See docs/flip.md.
 *
 * @module
 */

/**
 * A subscription request for {@link Subscriber}'s `subscribe`: `channel` is a name, or a
 * typed channel from `defineChannel`, whose events are then checked and typed.
 */
export interface SubscribeInput<C extends ChannelRef = string> {
  readonly tenant: string
  readonly channel: C
  /** A cursor, `"beginning"` or `"now"` (default). */
  readonly from?: StartPosition
  /**
   * Typed channels: told about each received event that fails its schema. Such an event is
   * not delivered (a subscription is a live view; a consumer group dead-letters instead),
   * and the subscription goes on past it. Default: a warning is logged with the event's id,
   * cursor and the schema's issues. A throw here ends the subscription with that error.
   */
  readonly onInvalid?: OnInvalidEvent
}

/**
 * A consumer-group request for {@link Subscriber}'s `consume`. With a typed channel, an
 * event that fails its schema is dead-lettered at once (retrying cannot fix it) with the
 * schema's issues as its reason; the handler never sees it.
 */
export interface ConsumeRequest<C extends ChannelRef = string> {
  /**
   * The tenant whose events of `channel` the group handles, or `"*"` ({@link allTenants})
   * for every tenant: a consumer group across tenants. Its members share the channel's
   * addresses (each runs some tenants, each tenant runs on one member at a time, in order)
   * and rebalance as members come and go; the handler reads `event.tenant`. Needs an
   * outbox with membership (Postgres, the in-memory one). See docs/concepts.md.
   */
  readonly tenant: string
  readonly channel: C
  /** Group name: members of one group share the work; each group sees every event. */
  readonly group: string
  /** Handlers running at once (default 1, which keeps channel order). */
  readonly concurrency?: number
  /** Attempts before an event is dead-lettered (default 5). */
  readonly maxAttempts?: number
  /** First retry delay in ms (default 200); doubles per attempt up to `maxBackoffMs`. */
  readonly initialBackoffMs?: number
  /** Retry delay cap in ms (default 30 000). */
  readonly maxBackoffMs?: number
  /**
   * When the consumer stops (closed, or the bus closes), how long a handler already running
   * may take to finish and have its event acknowledged, in ms (default 1 000). A handler that
   * finishes in time is not run again for that event by the next member; one that does not
   * is interrupted, and its event is delivered again.
   */
  readonly stopGraceMs?: number
  /**
   * `tenant: "*"` only: how long a member stays registered without renewing (default 5 000
   * ms). A member that dies is replaced within about this long and a quarter more; one that
   * closes, within about half of it. Members renew every quarter of it (one write each).
   */
  readonly memberLeaseMs?: number
  /**
   * `tenant: "*"` only: how often a member looks for tenants that published on the channel
   * for the first time (default 5 000 ms; one index-only read of the outbox's tenants).
   */
  readonly discoverIntervalMs?: number
}

/**
 * A handler for `consume`: fails (or throws, in the Promise facade) to ask for a retry.
 * `Event` is the event type (a typed channel's {@link ChannelEvent}).
 */
export type Handler<E = unknown, R = never, Event = DeliveredEvent> = (
  event: Event,
  attempt: number,
) => Effect.Effect<void, E, R>

/** How many handled ids a consumer remembers, to drop a redelivery of an already-acknowledged event. */
const handledWindow = 10_000

/** The consuming service. */
export class Subscriber extends Context.Service<
  Subscriber,
  {
    /** Events of one address after `from`, then live (typed and checked for a typed channel). */
    readonly subscribe: <C extends ChannelRef = string>(
      request: SubscribeInput<C>,
    ) => Stream.Stream<ChannelEvent<C>, BusError>
    /** Runs `handler` for every event of the group until interrupted or the transport fails for good. */
    readonly consume: <C extends ChannelRef, E, R>(
      request: ConsumeRequest<C>,
      handler: Handler<E, R, ChannelEvent<C>>,
    ) => Effect.Effect<void, BusError, R>
  }
>()("@bus/core/Subscriber") {
  /**
   * The subscriber over the transport in context. Consumer groups on a broker also use the
   * outbox's {@link OutboxReader} and {@link GroupStore} when present (the group's inbox
   * across a flip, membership for groups across tenants).
   */
  static readonly layer: Layer.Layer<Subscriber, never, Transport> = Layer.effect(
    Subscriber,
    Effect.gen(function* () {
      const transport = yield* Transport
      const reader = Option.getOrUndefined(yield* Effect.serviceOption(OutboxReader))
      const groupStore = Option.getOrUndefined(yield* Effect.serviceOption(GroupStore))
      // The inbox across transports needs both: where the group stood, and what a cursor covers.
      const store =
        reader !== undefined && groupStore !== undefined ? { reader, groups: groupStore } : undefined
      const system = transport.capabilities.name
      const delivered = Metric.withAttributes(eventsDelivered, { transport: system })
      const lag = Metric.withAttributes(deliveryLag, { transport: system })
      const skipped = Metric.withAttributes(inboxSkipped, { transport: system })

      const subscribe = (request: SubscribeInput<ChannelRef>): Stream.Stream<DeliveredEvent, BusError> => {
        const channel = request.channel
        const events = Stream.unwrap(
          checkAddress({ tenant: request.tenant, channel: channelName(channel) }).pipe(
            Effect.map((address) => {
              // The metrics' attributes bound to the stream's context once (again only if
              // that context changes): `withAttributes` builds a context on every update.
              let context: Context.Context<never> | undefined
              let bound: Context.Context<never> = Context.empty()
              return transport.subscribe({ ...address, from: request.from ?? "now" }).pipe(
                // Once per chunk (a page shared by every subscriber of the address), not
                // one effect per event: this runs for every subscriber.
                Stream.mapArrayEffect((events) =>
                  Effect.contextWith((current: Context.Context<never>) => {
                    if (current !== context) {
                      context = current
                      bound = withMetricAttributes(current, { transport: system })
                    }
                    eventsDelivered.updateUnsafe(events.length, bound)
                    const now = Date.now()
                    for (const event of events) deliveryLag.updateUnsafe(ageOf(event, now), bound)
                    return Effect.succeed(events)
                  }),
                ),
              )
            }),
          ),
        )
        if (!isChannel(channel)) return events
        const onInvalid = request.onInvalid
        // Checked per chunk; a chunk whose events all fail becomes empty and is dropped
        // (streams carry non-empty chunks only), the rest keep their order.
        return events.pipe(
          Stream.mapArrayEffect((chunk) => {
            const invalid: Array<readonly [DeliveredEvent, InvalidEvent]> = []
            const checked = checkPage(channel, chunk, (event, error) => invalid.push([event, error]))
            const report = (kept: ReadonlyArray<DeliveredEvent>) =>
              Effect.as(
                Effect.forEach(invalid, ([event, error]) =>
                  onInvalid !== undefined
                    ? Effect.sync(() => onInvalid(event, error))
                    : Effect.logWarning(invalidEventWarning(event, error)),
                ),
                [kept] as const,
              )
            return checked instanceof Promise
              ? Effect.flatMap(
                  Effect.promise(() => checked),
                  report,
                )
              : report(checked)
          }),
          Stream.filter((kept) => kept.length > 0),
          Stream.flattenIterable,
        )
      }

      /** The group of one (checked) address: the whole of `consume`, and one address of a group across tenants. */
      const consumeAddress = <E, R>(
        address: Address,
        group: string,
        request: ConsumeRequest<ChannelRef>,
        handler: Handler<E, R, DeliveredEvent>,
      ) =>
        Effect.gen(function* () {
          const typed = isChannel(request.channel) ? request.channel : undefined
          const concurrency = Math.max(1, request.concurrency ?? 1)
          const maxAttempts = Math.max(1, request.maxAttempts ?? 5)
          const initial = request.initialBackoffMs ?? 200
          const cap = request.maxBackoffMs ?? 30_000
          const key: GroupKey = { ...address, group }
          const handled = new Set<string>()
          const remember = (id: string) => {
            handled.add(id)
            if (handled.size > handledWindow) handled.delete(handled.values().next().value as string)
          }
          // Where each dead-lettered id was: the same id at another position is the event
          // replayed by an operator (replayDeadLetters), which this group must handle again,
          // while the same position again is a redelivery of the settled event.
          const deadLetteredAt = new Map<string, string>()
          const transient = {
            schedule: cappedBackoff("50 millis", "2 seconds"),
            while: (e: BusError) => e.retryable,
          }

          // Where the group stood on the outbox transports, and "now" as this member starts:
          // read lazily, only by transports whose deliveries the loop checks itself.
          let bounds: { readonly groupCursor: string | undefined; readonly start: string } | undefined
          const boundsOf = (s: NonNullable<typeof store>) =>
            bounds !== undefined
              ? Effect.succeed(bounds)
              : Effect.all([s.groups.groupCursor(key), s.reader.head(address)]).pipe(
                  Effect.retry(transient),
                  Effect.map(([groupCursor, start]) => {
                    bounds = { groupCursor, start }
                    return bounds
                  }),
                )

          /** True when the group already handled this event (on this or another transport). */
          const handledBefore = (delivery: Delivery): Effect.Effect<boolean, BusError> => {
            if (delivery.inbox === true || store === undefined) return Effect.succeed(false)
            const { event, position } = delivery
            return Effect.gen(function* () {
              const b = yield* boundsOf(store)
              if (position !== undefined) {
                // Covered by the group's outbox cursor: handled before a flip to this broker.
                if (b.groupCursor !== undefined && store.reader.covers(b.groupCursor, position) === true)
                  return true
                // Committed after this member started and delivered for the first time: no
                // earlier member can have handled it, so no lookup is needed.
                if (delivery.attempt <= 1 && store.reader.covers(b.start, position) === false) return false
              }
              const found = yield* store.groups.handled(key, [event.id]).pipe(Effect.retry(transient))
              return found.has(event.id)
            })
          }

          const mark = (delivery: Delivery) =>
            delivery.inbox === true || store === undefined
              ? Effect.void
              : store.groups.markHandled(key, [delivery.event.id]).pipe(Effect.retry(transient))

          // An ack lost to a dropped connection is retried rather than ending the consumer;
          // if the consumer dies anyway, the event is redelivered and deduplicated.
          const ack = (delivery: Delivery) => delivery.ack.pipe(Effect.retry(transient))

          /** Dead-letters the delivery with `reason` and settles it for this group. */
          const park = (delivery: Delivery, reason: string) =>
            Effect.gen(function* () {
              const { event } = delivery
              yield* delivery.deadLetter(reason)
              yield* mark(delivery)
              remember(event.id)
              deadLetteredAt.set(event.id, event.cursor)
              if (deadLetteredAt.size > handledWindow)
                deadLetteredAt.delete(deadLetteredAt.keys().next().value as string)
              yield* Metric.update(Metric.withAttributes(deadLettered, { source: group }), 1)
            })

          const handle = (delivery: Delivery) =>
            Effect.gen(function* () {
              const { event, attempt } = delivery
              // A redelivery of an event this consumer already acknowledged (an ack lost in
              // a reconnect) is acknowledged again without running the handler twice.
              if (handled.has(event.id)) {
                const parkedAt = deadLetteredAt.get(event.id)
                if (parkedAt === undefined || parkedAt === event.cursor) return yield* ack(delivery)
                handled.delete(event.id)
                deadLetteredAt.delete(event.id)
              }
              if (yield* handledBefore(delivery)) {
                yield* ack(delivery)
                remember(event.id)
                yield* Metric.update(skipped, 1)
                return
              }
              // A typed channel's event that fails its schema is parked at once: no attempt
              // can make it pass, and skipping it silently would lose it.
              let given: DeliveredEvent = event
              if (typed !== undefined) {
                const check = checkDelivered(typed, event)
                const checked = check instanceof Promise ? yield* Effect.promise(() => check) : check
                if ("error" in checked) {
                  yield* Effect.logWarning(`dead-lettering event ${event.id}: ${checked.error.message}`)
                  return yield* park(delivery, checked.error.message)
                }
                given = checked.value
              }
              const exit = yield* Effect.exit(
                handler(given, attempt).pipe(
                  Effect.withSpan(`process ${event.channel}`, {
                    kind: "consumer",
                    links: producerLinks([event]),
                    attributes: messagingAttributes(
                      system,
                      event,
                      { type: "process", name: "process" },
                      {
                        ...messageAttributes(event),
                        "messaging.consumer.group.name": group,
                        "bus.delivery.attempt": attempt,
                      },
                    ),
                  }),
                ),
              )
              if (exit._tag === "Success") {
                yield* mark(delivery)
                yield* ack(delivery)
                remember(event.id)
                yield* Metric.update(delivered, 1)
                yield* Metric.update(lag, ageOf(event))
                return
              }
              if (Cause.hasInterruptsOnly(exit.cause)) return yield* Effect.interrupt
              const reason = Cause.pretty(exit.cause)
              if (attempt >= maxAttempts) {
                yield* Effect.logWarning(`dead-lettering event ${event.id} after ${attempt} attempts`)
                return yield* park(delivery, reason)
              }
              yield* Metric.update(handlerRetries, 1)
              yield* delivery.retry(backoffDelay(attempt, initial, cap))
            })

          // A stop lets the handler in flight finish and settle its event, for up to
          // `stopGraceMs`: its side effects happened, so its event must not come again.
          const graceMs = Math.max(0, request.stopGraceMs ?? 1_000)
          const handleGracefully = (delivery: Delivery) =>
            Effect.uninterruptibleMask((restore) =>
              Effect.gen(function* () {
                const fiber = yield* Effect.forkChild(restore(handle(delivery)))
                const exit = yield* Effect.exit(restore(Fiber.await(fiber)))
                if (Exit.isSuccess(exit)) return yield* exit.value
                const late = yield* Fiber.await(fiber).pipe(Effect.timeout(graceMs), Effect.option)
                if (Option.isNone(late)) yield* Fiber.interrupt(fiber)
                return yield* Effect.interrupt
              }),
            )

          yield* transport
            .group({ ...address, group, maxInFlight: concurrency })
            .pipe(Stream.mapEffect(handleGracefully, { concurrency }), Stream.runDrain)
        })

      const consume = <E, R>(request: ConsumeRequest<ChannelRef>, handler: Handler<E, R, DeliveredEvent>) =>
        Effect.gen(function* () {
          if (request.tenant !== allTenants) {
            const address = yield* checkAddress({
              tenant: request.tenant,
              channel: channelName(request.channel),
            })
            const group = yield* checkName("group", request.group)
            return yield* consumeAddress(address, group, request, handler)
          }
          const channel = yield* checkName("channel", channelName(request.channel))
          const group = yield* checkName("group", request.group)
          const members = groupStore?.members
          if (members === undefined) {
            return yield* new ConfigError({
              message: `consume with tenant "*" (a consumer group across tenants) needs an outbox store with group membership (the Postgres or in-memory outbox); ${groupStore === undefined ? "this bus's outbox has no GroupStore" : `the outbox store ${reader?.name ?? ""} has none`}`,
            })
          }
          return yield* consumeAllTenants(
            {
              members,
              key: { channel, group },
              memberLeaseMs: request.memberLeaseMs ?? 5_000,
              discoverIntervalMs: request.discoverIntervalMs ?? 5_000,
              transport: system,
            },
            (tenant) => consumeAddress({ tenant, channel }, group, request, handler),
          )
        })

      return Subscriber.of({
        subscribe: subscribe as Subscriber["Service"]["subscribe"],
        consume: consume as Subscriber["Service"]["consume"],
      })
    }),
  )
}
