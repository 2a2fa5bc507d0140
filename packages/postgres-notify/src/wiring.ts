import { type Bus, ConfigError } from "@bus/core"
import {
  defaultMaxPayloadBytes,
  type Outbox,
  type OutboxLayers,
  outboxTransport,
  type TransportChoice,
  type TransportName,
} from "@bus/core/adapter"
import { Effect, Option } from "effect"
import { transportName } from "./errors.js"
import type { PostgresOutboxOptions } from "./options.js"
import type { NotifyMode } from "./outbox/append.js"
import { PostgresOutbox, type PostgresOutboxService, postgresOutboxLayer } from "./store.js"

/**
 * `postgresOutbox(options)`: the Postgres outbox for `createBus`, from a connection string or a
 * pool. It is the source of truth on every transport; its own transport (postgres-notify:
 * LISTEN/NOTIFY wake-ups, reads from the outbox) serves subscribers until the bus selects
 * a broker.
 *
 * @module
 */

/** Options of {@link postgresOutbox}: the outbox's (connection, schema, timeouts, retention…) and its transport's. */
export interface PostgresOptions extends PostgresOutboxOptions {
  /** Largest encoded event the transport accepts (default 1 MiB; NOTIFY carries only a pointer, so this is not NOTIFY's 8 000 bytes). */
  readonly maxPayloadBytes?: number
  /** Rows per outbox read of the transport (default 500). */
  readonly pageSize?: number
}

/**
 * The NOTIFY mode for a selected transport: `addresses` for postgres-notify (and the
 * memory transport); `none` for a broker, because escaping NOTIFY's commit lock is the
 * reason to run one — the relay polls the outbox instead (at once after a full batch,
 * backing off to its `maxIdleMs` when idle).
 */
export const notifyModeFor = (selected: TransportName): NotifyMode =>
  selected === "postgres-notify" || selected === "memory" ? "addresses" : "none"

/**
 * The Postgres outbox for `createBus({ outbox })`. The bus tells it which transport it
 * selected (configuration and `BUS_*` environment, read once by the bus), and the outbox
 * fits itself to it: a NOTIFY per address when subscribers read the outbox, none inside
 * producer transactions when a broker does (the relay forwards the rows), and retention
 * that never deletes a row the relay has not forwarded.
 *
 * @example
 * ```ts
 * import { createBus } from "@bus/core"
 * import { nats } from "@bus/nats"
 * import { postgresOutbox } from "@bus/postgres-notify"
 *
 * const bus = await createBus({
 *   outbox: postgresOutbox({ connectionString: process.env.DATABASE_URL }),
 *   transport: { use: "auto", notifyRate: 200, broker: nats({ servers: process.env.NATS_URL }) },
 * })
 * ```
 */
export const postgresOutbox = (options: PostgresOptions = {}): Outbox => ({
  transport: transportName,
  layers: (choice: TransportChoice): OutboxLayers => {
    const { maxPayloadBytes, pageSize, ...storeOptions } = options
    const selected = choice.transport
    const notify = options.notify ?? notifyModeFor(selected)
    // The transport in the pool's application_name, so operators see which transport each
    // process runs (`bus status` lists them from pg_stat_activity).
    const applicationName = storeOptions.applicationName ?? `bus (${selected})`
    // With a broker the relay marks rows forwarded; retention must never delete a row it
    // has not forwarded yet, whatever the notify mode.
    const broker = notifyModeFor(selected) === "none"
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
    return { outbox, transport }
  },
})

/**
 * The Postgres-only parts of a bus's outbox (LISTEN/NOTIFY health, NOTIFY pressure, the
 * after-commit batched `transaction`, retention status, its pool). Fails with
 * `ConfigError` when the bus was not built on {@link postgresOutbox}.
 *
 * @example
 * ```ts
 * import { createBus } from "@bus/core"
 * import { postgresOutbox, postgresOutboxOf } from "@bus/postgres-notify"
 *
 * const bus = await createBus({ outbox: postgresOutbox({ connectionString: process.env.DATABASE_URL }) })
 * const outbox = await postgresOutboxOf(bus)
 * console.log(outbox.healthNow().notify, outbox.pressure())
 * ```
 */
export const postgresOutboxOf = (bus: Pick<Bus, "runtime">): Promise<PostgresOutboxService> =>
  // The bus's context holds the service whenever its outbox is `postgresOutbox(…)`; its type
  // names only the core services, so look it up as an option.
  (bus.runtime as unknown as { runPromise: <A, E>(e: Effect.Effect<A, E, never>) => Promise<A> }).runPromise(
    Effect.flatMap(
      Effect.serviceOption(PostgresOutbox) as Effect.Effect<Option.Option<PostgresOutboxService>>,
      (service) =>
        Option.isSome(service)
          ? Effect.succeed(service.value)
          : Effect.fail(new ConfigError({ message: "this bus's outbox is not postgresOutbox(…)" })),
    ),
  )
