import { Cause, Context, Effect, Layer, Metric, Stream } from "effect"
import type { Delivery, SubscribeRequest } from "../contracts/Transport.js"
import { Transport } from "../contracts/Transport.js"
import type { DeliveredEvent } from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"
import { deadLettered, eventsDelivered, handlerRetries } from "../metrics/metrics.js"
import { checkAddress, checkName } from "../names/Name.js"
import { backoffDelay, cappedBackoff } from "../schedule/backoff.js"

/**
 * Consuming: `subscribe` for a stream of events from a cursor, `consume` for a consumer
 * group with acknowledgements, bounded retries with backoff and a dead-letter place.
 *
 * @module
 */

/** A consumer-group request for {@link Subscriber}'s `consume`. */
export interface ConsumeRequest {
  readonly tenant: string
  readonly channel: string
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
}

/** A handler for `consume`: fails (or throws, in the Promise facade) to ask for a retry. */
export type Handler<E = unknown, R = never> = (
  event: DeliveredEvent,
  attempt: number,
) => Effect.Effect<void, E, R>

/** How many handled ids a consumer remembers, to drop a redelivery of an already-acknowledged event. */
const handledWindow = 10_000

/** The consuming service. */
export class Subscriber extends Context.Service<
  Subscriber,
  {
    /** Events of one address after `from`, then live. */
    readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
    /** Runs `handler` for every event of the group until interrupted or the transport fails for good. */
    readonly consume: <E, R>(
      request: ConsumeRequest,
      handler: Handler<E, R>,
    ) => Effect.Effect<void, BusError, R>
  }
>()("@bus/core/Subscriber") {
  /** The subscriber over the transport in context. */
  static readonly layer: Layer.Layer<Subscriber, never, Transport> = Layer.effect(
    Subscriber,
    Effect.gen(function* () {
      const transport = yield* Transport
      const delivered = Metric.withAttributes(eventsDelivered, { transport: transport.capabilities.name })

      const subscribe = (request: SubscribeRequest) =>
        Stream.unwrap(
          checkAddress(request).pipe(
            Effect.map((address) =>
              transport
                .subscribe({ ...address, from: request.from ?? "now" })
                .pipe(Stream.tap(() => Metric.update(delivered, 1))),
            ),
          ),
        )

      const consume = <E, R>(request: ConsumeRequest, handler: Handler<E, R>) =>
        Effect.gen(function* () {
          const address = yield* checkAddress(request)
          const group = yield* checkName("group", request.group)
          const concurrency = Math.max(1, request.concurrency ?? 1)
          const maxAttempts = Math.max(1, request.maxAttempts ?? 5)
          const initial = request.initialBackoffMs ?? 200
          const cap = request.maxBackoffMs ?? 30_000
          const handled = new Set<string>()
          const remember = (id: string) => {
            handled.add(id)
            if (handled.size > handledWindow) handled.delete(handled.values().next().value as string)
          }

          // An ack lost to a dropped connection is retried rather than ending the consumer;
          // if the consumer dies anyway, the event is redelivered and deduplicated.
          const ack = (delivery: Delivery) =>
            delivery.ack.pipe(
              Effect.retry({ schedule: cappedBackoff("50 millis", "2 seconds"), while: (e) => e.retryable }),
            )

          const handle = (delivery: Delivery) =>
            Effect.gen(function* () {
              const { event, attempt } = delivery
              // A redelivery of an event this consumer already acknowledged (an ack lost in
              // a reconnect) is acknowledged again without running the handler twice.
              if (handled.has(event.id)) return yield* ack(delivery)
              const exit = yield* Effect.exit(handler(event, attempt))
              if (exit._tag === "Success") {
                yield* ack(delivery)
                remember(event.id)
                yield* Metric.update(delivered, 1)
                return
              }
              if (Cause.hasInterruptsOnly(exit.cause)) return yield* Effect.interrupt
              const reason = Cause.pretty(exit.cause)
              if (attempt >= maxAttempts) {
                yield* Effect.logWarning(`dead-lettering event ${event.id} after ${attempt} attempts`)
                yield* delivery.deadLetter(reason)
                remember(event.id)
                yield* Metric.update(Metric.withAttributes(deadLettered, { source: group }), 1)
                return
              }
              yield* Metric.update(handlerRetries, 1)
              yield* delivery.retry(backoffDelay(attempt, initial, cap))
            }).pipe(
              Effect.withSpan("bus.consume", { attributes: { "messaging.consumer.group.name": group } }),
            )

          yield* transport
            .group({ ...address, group, maxInFlight: concurrency })
            .pipe(Stream.mapEffect(handle, { concurrency }), Stream.runDrain)
        })

      return Subscriber.of({ subscribe, consume })
    }),
  )
}
