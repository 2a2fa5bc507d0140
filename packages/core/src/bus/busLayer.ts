import { Context, Effect, Layer } from "effect"
import { checkComplete, type OutboxCore, requireComplete } from "../contracts/outboxStore.js"
import { Transport } from "../contracts/transport.js"
import type { Broker, Outbox } from "../contracts/wiring.js"
import {
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
  type TransportName,
} from "../model/config.js"
import { type BusError, ConfigError } from "../model/errors.js"
import { Publisher } from "./publisher.js"
import { type RelayOptions, runRelay } from "./relay.js"
import { Subscriber } from "./subscriber.js"

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

/**
 * How the bus picks its transport. One value picks it: `"auto"` (the default) keeps the
 * outbox's own transport (Postgres LISTEN/NOTIFY) below `notifyRateThreshold` and moves to
 * the broker at and above it. `BUS_TRANSPORT`, `BUS_NOTIFY_RATE`,
 * `BUS_NOTIFY_RATE_THRESHOLD` and `BUS_BROKER` override these at deploy time (docs/flip.md).
 */
export interface TransportOptions {
  /**
   * `"auto"` (default), or a transport by name: the outbox's own (`postgres-notify`,
   * `memory`) or a broker's (`nats`, `redis-streams`).
   */
  readonly use?: TransportName | "auto"
  /** Expected notifying commits per second (producer transactions that publish). */
  readonly notifyRate?: number
  /** Rate at and above which `"auto"` leaves the outbox's transport for the broker. Default 1 000 (`defaultNotifyRateThreshold`). */
  readonly notifyRateThreshold?: number
  /**
   * The broker(s) this application ships, e.g. `nats({ servers })`. `"auto"` picks the
   * first, or the one `BUS_BROKER` names. Only the selected one is ever built.
   */
  readonly broker?: Broker | ReadonlyArray<Broker>
}

/** Options of `createBus` and {@link busLayer}. */
export interface BusOptions {
  /** The outbox (source of truth): `postgresOutbox({ connectionString })` from `@bus/postgres-notify`, or `memoryOutbox()`. */
  readonly outbox: Outbox
  /** Transport selection; default `"auto"` on the outbox's own transport. */
  readonly transport?: TransportOptions
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

const brokersOf = (options: BusOptions): ReadonlyArray<Broker> => {
  const b = options.transport?.broker
  return b === undefined ? [] : "layer" in b ? [b as Broker] : (b as ReadonlyArray<Broker>)
}

/**
 * Resolves the options and the environment to a transport choice, as the bus will: for
 * code that must know the choice before it builds a bus.
 */
export const resolveSelection = (options: BusOptions): TransportChoice | ConfigError => {
  const t = options.transport ?? {}
  const base: SelectionConfig = {
    ...(t.use !== undefined ? { transport: t.use } : {}),
    ...(t.notifyRate !== undefined ? { notifyRate: t.notifyRate } : {}),
    ...(t.notifyRateThreshold !== undefined ? { notifyRateThreshold: t.notifyRateThreshold } : {}),
    ...(brokersOf(options)[0] !== undefined ? { broker: brokersOf(options)[0]!.name } : {}),
  }
  const selection = options.env === false ? base : selectionFromEnv(base, options.env ?? process.env)
  if (selection instanceof ConfigError) return selection
  return selectTransport(selection, options.outbox.transport)
}

/**
 * The whole bus as one Layer, for Effect code: the same options as `createBus`. Fails
 * with `ConfigError` when the configuration or environment selects a transport it was
 * not given.
 *
 * @example
 * ```ts
 * import { busLayer, memoryOutbox, Publisher } from "@bus/core"
 * import { Effect } from "effect"
 *
 * const outbox = memoryOutbox()
 * const program = Effect.gen(function* () {
 *   const publisher = yield* Publisher
 *   const tx = outbox.begin()
 *   yield* publisher.publish(tx, { tenant: "acme", channel: "orders", type: "order.paid", data: { id: 1 } })
 *   tx.commit()
 * })
 * await Effect.runPromise(program.pipe(Effect.provide(busLayer({ outbox }))))
 * ```
 */
export const busLayer = (
  options: BusOptions,
): Layer.Layer<Publisher | Subscriber | Transport | OutboxCore | TransportSelection, BusError> => {
  const layer = busLayerWithout(options)
  // Built inside the telemetry layer, so the relay and every fiber the bus forks use its tracer.
  return options.telemetry === undefined ? layer : layer.pipe(Layer.provideMerge(options.telemetry))
}

const busLayerWithout = (
  options: BusOptions,
): Layer.Layer<Publisher | Subscriber | Transport | OutboxCore | TransportSelection, BusError> =>
  Layer.unwrap(
    Effect.gen(function* () {
      const choice = resolveSelection(options)
      if (choice instanceof ConfigError) return yield* choice
      const brokers = brokersOf(options)
      const own = options.outbox.transport
      const broker = brokers.find((b) => b.name === choice.transport)
      if (choice.transport !== own && broker === undefined) {
        const provided = [own, ...brokers.map((b) => b.name)].join(", ")
        return yield* new ConfigError({
          message: `${choice.reason}, but no ${choice.transport} transport was provided to the bus (provided: ${provided}); ${
            choice.transport === "postgres-notify" || choice.transport === "memory"
              ? `it reads the ${choice.transport === "memory" ? "memoryOutbox()" : "postgresOutbox(…)"} outbox`
              : `pass transport: { broker: … } from @bus/${choice.transport}`
          }`,
        })
      }
      yield* Effect.logInfo(`bus: using ${choice.transport} (${choice.reason})`)
      // The outbox is built for the choice (its NOTIFY mode depends on who reads it).
      const layers = options.outbox.layers(choice)
      // A broker is fed by the relay, which needs the whole outbox contract: an outbox of a
      // writer and a reader only is refused here, at start, naming what it lacks.
      const complete =
        broker === undefined ? undefined : requireComplete(layers.outbox, `the ${broker.name} transport`)
      const base =
        complete === undefined || broker === undefined
          ? layers.transport.pipe(Layer.provideMerge(layers.outbox))
          : broker.layer.pipe(Layer.provideMerge(complete))
      const relay = Layer.effectDiscard(
        Effect.gen(function* () {
          const t = yield* Transport
          if (t.capabilities.needsRelay && options.relay !== false) {
            // The relay reads the outbox's relay log and parks poison events in its dead letters.
            const context = yield* checkComplete(yield* Effect.context<OutboxCore | Transport>(), "the relay")
            yield* Effect.forkScoped(
              runRelay(options.relay === undefined ? {} : options.relay).pipe(Effect.provideContext(context)),
            )
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
