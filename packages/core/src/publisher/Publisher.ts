import { Context, Effect, Layer, Metric } from "effect"
import { OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import { defaultMaxPayloadBytes, type EventInput, makeEnvelope } from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"
import { eventsPublished } from "../metrics/metrics.js"

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
        const publish = Effect.fn("bus.publish")(function* (
          tx: unknown,
          input: EventInput | ReadonlyArray<EventInput>,
        ) {
          const inputs: ReadonlyArray<EventInput> = Array.isArray(input) ? input : [input as EventInput]
          const now = new Date()
          const envelopes = yield* Effect.forEach(inputs, (e) => makeEnvelope(e, { maxPayloadBytes, now }))
          yield* store.append(tx, envelopes)
          yield* Metric.update(
            Metric.withAttributes(eventsPublished, { transport: transport.capabilities.name }),
            envelopes.length,
          )
          return { ids: envelopes.map((e) => e.id) } satisfies PublishReceipt
        })
        return Publisher.of({ publish })
      }),
    )
}
