import { Context, Effect, Layer } from "effect"
import {
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
  type TransportName,
} from "../config/BusConfig.js"
import type { OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import { type BusError, ConfigError } from "../errors/BusError.js"
import { Publisher } from "../publisher/Publisher.js"
import { type RelayOptions, runRelay } from "../relay/Relay.js"
import { Subscriber } from "../subscriber/Subscriber.js"

/**
 * The whole bus as one Effect Layer: outbox, the selected transport, publisher,
 * subscriber and (for brokers) the relay.
 *
 * @module
 */

/** Which transport runs and why; read it to log or display the choice. */
export class TransportSelection extends Context.Service<TransportSelection, TransportChoice>()(
  "@bus/core/TransportSelection",
) {}

/** Options shared by {@link busLayer} and `createBus`. */
export interface BusOptions extends SelectionConfig {
  /** The outbox (source of truth), e.g. `postgresNotify(...).outbox` from `@bus/postgres-notify`. */
  readonly outbox: Layer.Layer<OutboxStore, BusError>
  /**
   * Transport implementations this application ships, by name. Only the selected one is
   * built, so listing a broker costs nothing until the configuration picks it.
   */
  readonly transports: Partial<Record<TransportName, Layer.Layer<Transport, BusError, OutboxStore>>>
  /** Environment to read `BUS_*` overrides from; `false` ignores the environment. Default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>> | false
  /** Relay settings, or `false` to run the relay elsewhere. Runs only when the transport needs one. */
  readonly relay?: RelayOptions | false
  /** Largest encoded event `publish` accepts (default 1 MiB, or the transport's limit when lower). */
  readonly maxPayloadBytes?: number
  /**
   * A layer that installs a tracer and/or metrics exporter for everything the bus runs
   * (publish, relay, consumers): for example Effect's OTLP exporter
   * (`Otlp.layerJson({ baseUrl }).pipe(Layer.provide(FetchHttpClient.layer))` from
   * `effect/observability` and `effect/http`), or `OtelTracer.layerGlobal` of
   * `@effect/opentelemetry` to use the application's own OpenTelemetry SDK. Whatever else
   * the layer provides stays inside the bus. See docs/observability.md.
   */
  readonly telemetry?: Layer.Layer<never, never, never>
}

/** Resolves configuration and environment to a transport choice. */
export const resolveSelection = (options: BusOptions): TransportChoice | ConfigError => {
  const selection = options.env === false ? options : selectionFromEnv(options, options.env ?? process.env)
  if (selection instanceof ConfigError) return selection
  return selectTransport(selection)
}

/** Builds the bus layer; fails with `ConfigError` when the selected transport is not provided. */
export const busLayer = (
  options: BusOptions,
): Layer.Layer<Publisher | Subscriber | Transport | OutboxStore | TransportSelection, BusError> => {
  const layer = busLayerWithout(options)
  // Built inside the telemetry layer, so the relay and every fiber the bus forks use its tracer.
  return options.telemetry === undefined ? layer : layer.pipe(Layer.provideMerge(options.telemetry))
}

const busLayerWithout = (
  options: BusOptions,
): Layer.Layer<Publisher | Subscriber | Transport | OutboxStore | TransportSelection, BusError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const choice = resolveSelection(options)
      if (choice instanceof ConfigError) return yield* choice
      const transport = options.transports[choice.transport]
      if (transport === undefined) {
        const provided = Object.keys(options.transports).join(", ") || "none"
        return yield* new ConfigError({
          message: `${choice.reason}, but no ${choice.transport} transport was provided to the bus (provided: ${provided}); install and pass @bus/${choice.transport === "memory" ? "core memoryTransport()" : choice.transport}`,
        })
      }
      yield* Effect.logInfo(`bus: using ${choice.transport} (${choice.reason})`)
      const base = transport.pipe(Layer.provideMerge(options.outbox))
      const relay = Layer.effectDiscard(
        Effect.gen(function* () {
          const t = yield* Transport
          if (t.capabilities.needsRelay && options.relay !== false) {
            yield* Effect.forkScoped(runRelay(options.relay === undefined ? {} : options.relay))
          }
        }),
      )
      return Layer.mergeAll(
        Publisher.layer({
          ...(options.maxPayloadBytes !== undefined ? { maxPayloadBytes: options.maxPayloadBytes } : {}),
        }),
        Subscriber.layer,
        relay,
        Layer.succeed(TransportSelection, choice),
      ).pipe(Layer.provideMerge(base))
    }),
  )
