import {
  type BusError,
  ConfigError,
  defaultMaxPayloadBytes,
  type OutboxStore,
  outboxTransport,
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type Transport,
  type TransportName,
} from "@bus/core"
import type { Layer } from "effect"
import { transportName } from "./errors.js"
import type { NotifyMode } from "./outbox/append.js"
import type { PostgresOutboxOptions } from "./outbox/options.js"
import { type PostgresOutbox, postgresOutboxLayer } from "./outbox/PostgresOutboxStore.js"

/**
 * `postgresNotify(options)`: what `createBus` needs from this package, in one call: the
 * outbox layer and the postgres-notify transport layer, with the NOTIFY mode that fits
 * the transport the bus will select.
 *
 * @module
 */

/** Options of {@link postgresNotify}. */
export interface PostgresNotifyOptions extends PostgresOutboxOptions {
  /**
   * The bus's transport selection (the same `transport`, `notifyRate`,
   * `notifyRateThreshold`, `broker` you pass to `createBus`), read together with the
   * `BUS_*` environment exactly as the bus reads it. It decides `notify` when that is
   * not given: the postgres-notify transport gets a NOTIFY per address (subscribers
   * read the outbox directly); a broker gets one on the relay channel (subscribers read
   * the broker; the relay forwards the outbox). Omit it for a postgres-notify bus.
   */
  readonly selection?: SelectionConfig
  /** Environment for `BUS_*` overrides; `false` ignores it. Default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>> | false
  /** Largest encoded event the transport accepts (default 1 MiB; NOTIFY carries only a pointer, so this is not NOTIFY's 8 000 bytes). */
  readonly maxPayloadBytes?: number
  /** Rows per outbox read of the transport (default 500). */
  readonly pageSize?: number
}

/** The layers of {@link postgresNotify}. */
export interface PostgresNotify {
  /** The outbox (`OutboxStore`, and `PostgresOutbox` for the Postgres-only parts). */
  readonly outbox: Layer.Layer<OutboxStore | PostgresOutbox, BusError>
  /** The postgres-notify transport over that outbox (core's outbox transport). */
  readonly transport: Layer.Layer<Transport, BusError, OutboxStore>
  /** The NOTIFY mode chosen, and the transport it was chosen for (`undefined` when the selection is invalid). */
  readonly notify: NotifyMode
  readonly selected: TransportName | undefined
}

/**
 * The NOTIFY mode for a selected transport: `addresses` for postgres-notify (and the
 * memory transport); `none` for a broker, because escaping NOTIFY's commit lock is the
 * reason to run one — the relay polls the outbox instead (at once after a full batch,
 * backing off to its `maxIdleMs` when idle). An invalid selection gets `both`, which is
 * correct for either (the bus itself then refuses to start with the selection's error).
 */
export const notifyModeFor = (selected: TransportName | undefined): NotifyMode =>
  selected === undefined ? "both" : selected === "nats" || selected === "redis-streams" ? "none" : "addresses"

/**
 * Builds the outbox and transport layers for `createBus`:
 *
 * ```ts
 * import { createBus } from "@bus/core"
 * import { natsTransport } from "@bus/nats"
 * import { postgresNotify } from "@bus/postgres-notify"
 *
 * const selection = { transport: "auto", notifyRate: 200, broker: "nats" } as const
 * const pg = postgresNotify({ connectionString: process.env.DATABASE_URL, selection })
 * const bus = await createBus({
 *   ...selection,
 *   outbox: pg.outbox,
 *   transports: { "postgres-notify": pg.transport, nats: natsTransport({ servers: process.env.NATS_URL }) },
 * })
 * ```
 */
export const postgresNotify = (options: PostgresNotifyOptions = {}): PostgresNotify => {
  const { selection, env, maxPayloadBytes, pageSize, ...storeOptions } = options
  let selected: TransportName | undefined
  const config = env === false ? (selection ?? {}) : selectionFromEnv(selection ?? {}, env ?? process.env)
  if (!(config instanceof ConfigError)) {
    const choice = selectTransport(config)
    if (!(choice instanceof ConfigError)) selected = choice.transport
  }
  const notify = options.notify ?? notifyModeFor(selected)
  // The transport in the pool's application_name, so operators see which transport each
  // process runs (`bus status` lists them from pg_stat_activity).
  const applicationName =
    storeOptions.applicationName ?? (selected === undefined ? "bus" : `bus (${selected})`)
  // With a broker the relay marks rows forwarded; retention must never delete a row it
  // has not forwarded yet, whatever the notify mode.
  const broker = selected === "nats" || selected === "redis-streams"
  const retention =
    broker && storeOptions.retention !== undefined && storeOptions.retention !== false
      ? {
          ...(storeOptions.retention === true ? {} : storeOptions.retention),
          keepUnforwarded:
            (storeOptions.retention === true ? undefined : storeOptions.retention.keepUnforwarded) ?? true,
        }
      : storeOptions.retention
  const outbox = postgresOutboxLayer({
    ...storeOptions,
    ...(retention !== undefined ? { retention } : {}),
    applicationName,
    notify,
  })
  const transport = outboxTransport({
    name: transportName,
    ...(pageSize !== undefined ? { pageSize } : {}),
    capabilities: {
      maxPayloadBytes: maxPayloadBytes ?? defaultMaxPayloadBytes,
      replay: true,
      consumerGroups: true,
      needsRelay: false,
      ordering: "per-transaction",
      dedupesSends: false,
    },
  })
  return { outbox, transport, notify, selected }
}

// Type-level check: the outbox layer fits where createBus expects an OutboxStore layer.
const _fits: (l: PostgresNotify["outbox"]) => Layer.Layer<OutboxStore, BusError> = (l) => l
void _fits
