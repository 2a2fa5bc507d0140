import { Context, Effect, Layer, Metric, Option, Tracer } from "effect"
import { OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import {
  buildEnvelope,
  defaultMaxPayloadBytes,
  type Envelope,
  type EventInput,
  isEnvelopeError,
  isoNow,
} from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"
import { eventsPublished } from "../metrics/metrics.js"
import { destinationOf, traceparentOf } from "../observability/telemetry.js"

/**
 * Publishing: validate every event, then append them all to the outbox inside the
 * caller's transaction. Either all events of a call are appended or none is.
 *
 * @module
 */

/** What `publish` returns: the ids of the appended events, in order. */
export interface PublishReceipt {
  readonly ids: ReadonlyArray<string>
}

/** Options of {@link Publisher.layer}. */
export interface PublisherOptions {
  /** Largest encoded event accepted; the transport's own limit applies when lower. */
  readonly maxPayloadBytes?: number
}

/** The publishing service. */
export class Publisher extends Context.Service<
  Publisher,
  {
    /** Appends one or more events inside `tx`; they are delivered if and when `tx` commits. */
    readonly publish: (
      tx: unknown,
      events: EventInput | ReadonlyArray<EventInput>,
    ) => Effect.Effect<PublishReceipt, BusError>
  }
>()("@bus/core/Publisher") {
  /** The publisher over the outbox and transport in context. */
  static readonly layer = (
    options: PublisherOptions = {},
  ): Layer.Layer<Publisher, never, OutboxStore | Transport> =>
    Layer.effect(
      Publisher,
      Effect.gen(function* () {
        const store = yield* OutboxStore
        const transport = yield* Transport
        const maxPayloadBytes = Math.min(
          options.maxPayloadBytes ?? defaultMaxPayloadBytes,
          transport.capabilities.maxPayloadBytes,
        )
        const system = transport.capabilities.name
        const published = Metric.withAttributes(eventsPublished, { transport: system })
        const publish = (tx: unknown, input: EventInput | ReadonlyArray<EventInput>) => {
          const inputs: ReadonlyArray<EventInput> = Array.isArray(input) ? input : [input as EventInput]
          // `inSpan`: run inside the publish span (found without a failing lookup: a
          // NoSuchElementError per publish costs a stack trace).
          const body = (inSpan: boolean) =>
            Effect.gen(function* () {
              const span = inSpan ? Option.some(yield* Effect.orDie(Effect.currentSpan)) : Option.none()
              // The caller has a span: carry the publish span's context to consumers in the
              // envelope (an event that already names its own traceparent keeps it).
              const traceparent =
                Option.isSome(span) && Option.isSome(span.value.parent)
                  ? traceparentOf(span.value)
                  : undefined
              const traced =
                traceparent === undefined
                  ? inputs
                  : inputs.map((e) =>
                      typeof e === "object" &&
                      e !== null &&
                      (e.headers === undefined ||
                        (typeof e.headers === "object" &&
                          e.headers !== null &&
                          !Array.isArray(e.headers) &&
                          e.headers.traceparent === undefined))
                        ? { ...e, headers: { ...e.headers, traceparent } }
                        : e,
                    )
              // Each event is validated and encoded once, here; the store reuses that encoding.
              const time = isoNow()
              const envelopes: Array<Envelope> = []
              for (const e of traced) {
                const built = buildEnvelope(e, { maxPayloadBytes, time })
                if (isEnvelopeError(built)) return yield* Effect.fail(built)
                envelopes.push(built)
              }
              yield* store.append(tx, envelopes)
              if (Option.isSome(span)) {
                const first = envelopes[0]
                if (first !== undefined)
                  span.value.attribute("messaging.destination.name", destinationOf(first))
                if (envelopes.length === 1) span.value.attribute("messaging.message.id", first!.id)
                else span.value.attribute("messaging.batch.message_count", envelopes.length)
              }
              yield* Metric.update(published, envelopes.length)
              return { ids: envelopes.map((e) => e.id) } satisfies PublishReceipt
            })
          const channels = new Set(inputs.map((e) => (typeof e?.channel === "string" ? e.channel : "")))
          const channel = channels.size === 1 ? [...channels][0]! : ""
          const spanned = body(true).pipe(
            Effect.withSpan(
              channel === "" ? "publish" : `publish ${channel}`,
              {
                kind: "producer",
                attributes: {
                  "messaging.system": system,
                  "messaging.operation.type": "send",
                  "messaging.operation.name": "publish",
                },
              },
              { captureStackTrace: false },
            ),
          )
          // Without a tracer of the application's and without a caller span, the publish
          // span would be recorded nowhere and carry no context: skip making it (span ids
          // and attributes cost more than the rest of the publish's client-side work).
          return Effect.flatMap(Effect.tracer, (tracer) =>
            tracer !== Tracer.nativeTracer
              ? spanned
              : Effect.flatMap(Effect.serviceOption(Tracer.ParentSpan), (parent) =>
                  Option.isSome(parent) ? spanned : body(false),
                ),
          )
        }
        return Publisher.of({ publish })
      }),
    )
}
