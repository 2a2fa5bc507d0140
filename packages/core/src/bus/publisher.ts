import { Context, Effect, Layer, Metric, Option, Tracer } from "effect"
import { OutboxWriter } from "../contracts/outboxStore.js"
import { Transport } from "../contracts/transport.js"
import {
  type AnyChannel,
  type ChannelEventInput,
  type Checked,
  checkData,
  isChannel,
} from "../model/channel.js"
import {
  buildEnvelope,
  defaultMaxPayloadBytes,
  type Envelope,
  type EventInput,
  isEnvelopeError,
  isoNow,
} from "../model/envelope.js"
import type { BusError, InvalidEvent } from "../model/errors.js"
import { eventsPublished } from "../observability/metrics.js"
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

/**
 * What `publish` takes: an untyped {@link EventInput} (channel by name), or an event of a
 * typed channel (`channel` a channel from `defineChannel`), whose `type` and `data` are
 * checked against the channel's schemas before anything is written.
 */
export type PublishInput<C extends AnyChannel = never> = EventInput | ChannelEventInput<C>

/**
 * Events of typed channels checked against their schemas and turned into plain inputs
 * (channel by name, data as given: the schema's input form is the wire form). Untyped
 * inputs pass through untouched; `undefined` when the call has no typed event (nothing to do).
 */
const resolveTyped = (
  inputs: ReadonlyArray<PublishInput<AnyChannel>>,
): Effect.Effect<ReadonlyArray<EventInput>, InvalidEvent> | undefined => {
  if (!inputs.some((e) => typeof e === "object" && e !== null && isChannel(e.channel))) return undefined
  const checks: Array<Checked<unknown> | Promise<Checked<unknown>> | undefined> = inputs.map((e) =>
    typeof e === "object" && e !== null && isChannel(e.channel)
      ? checkData(e.channel, e.type, e.data)
      : undefined,
  )
  const finish = (settled: ReadonlyArray<Checked<unknown> | undefined>) => {
    for (const c of settled) if (c !== undefined && "error" in c) return Effect.fail(c.error)
    return Effect.succeed(
      inputs.map((e) =>
        isChannel(e.channel) ? ({ ...e, channel: e.channel.name } as EventInput) : (e as EventInput),
      ),
    )
  }
  // Async schemas are awaited here, before the outbox is touched: a refusal changes nothing.
  return checks.some((c) => c instanceof Promise)
    ? Effect.flatMap(
        Effect.promise(() => Promise.all(checks)),
        finish,
      )
    : finish(checks as ReadonlyArray<Checked<unknown> | undefined>)
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
    /**
     * Appends one or more events inside `tx`; they are delivered if and when `tx` commits.
     * Events of a typed channel are checked against its schemas first: a mismatch fails with
     * `InvalidEvent` (reason `schema`) before any write, so it changes nothing in `tx`.
     */
    readonly publish: <C extends AnyChannel = never>(
      tx: unknown,
      events: PublishInput<C> | ReadonlyArray<PublishInput<C>>,
    ) => Effect.Effect<PublishReceipt, BusError>
  }
>()("@bus/core/Publisher") {
  /** The publisher over the outbox and transport in context. */
  static readonly layer = (
    options: PublisherOptions = {},
  ): Layer.Layer<Publisher, never, OutboxWriter | Transport> =>
    Layer.effect(
      Publisher,
      Effect.gen(function* () {
        const store = yield* OutboxWriter
        const transport = yield* Transport
        const maxPayloadBytes = Math.min(
          options.maxPayloadBytes ?? defaultMaxPayloadBytes,
          transport.capabilities.maxPayloadBytes,
        )
        const system = transport.capabilities.name
        const published = Metric.withAttributes(eventsPublished, { transport: system })
        const spanAttributes = {
          "messaging.system": system,
          "messaging.operation.type": "send",
          "messaging.operation.name": "publish",
        }
        const publish = (
          tx: unknown,
          input: PublishInput<AnyChannel> | ReadonlyArray<PublishInput<AnyChannel>>,
        ): Effect.Effect<PublishReceipt, BusError> => {
          const given: ReadonlyArray<PublishInput<AnyChannel>> = Array.isArray(input)
            ? input
            : [input as PublishInput<AnyChannel>]
          const typed = resolveTyped(given)
          return typed === undefined
            ? publishPlain(tx, given as ReadonlyArray<EventInput>)
            : Effect.flatMap(typed, (inputs) => publishPlain(tx, inputs))
        }
        const publishPlain = (tx: unknown, inputs: ReadonlyArray<EventInput>) => {
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
          // Built only when a span is wanted: its name needs a pass over the events.
          const spanned = () => {
            const first = inputs[0]?.channel
            let channel = typeof first === "string" ? first : ""
            for (const e of inputs) if (e?.channel !== first) channel = ""
            return body(true).pipe(
              Effect.withSpan(
                channel === "" ? "publish" : `publish ${channel}`,
                { kind: "producer", attributes: spanAttributes },
                { captureStackTrace: false },
              ),
            )
          }
          // Without a tracer of the application's and without a caller span, the publish
          // span would be recorded nowhere and carry no context: skip making it (span ids
          // and attributes cost more than the rest of the publish's client-side work).
          return Effect.flatMap(Effect.tracer, (tracer) =>
            tracer !== Tracer.nativeTracer
              ? spanned()
              : Effect.flatMap(Effect.serviceOption(Tracer.ParentSpan), (parent) =>
                  Option.isSome(parent) ? spanned() : body(false),
                ),
          )
        }
        return Publisher.of({ publish: publish as Publisher["Service"]["publish"] })
      }),
    )
}
