/**
 * @bus/postgres-notify — the Postgres outbox of the @bus event bus: `postgresOutbox({ connectionString })`
 * (or `{ pool }`) for `createBus({ outbox })`, with LISTEN/NOTIFY delivery, and `migrate`
 * to apply its schema. Store internals, cursor codecs, channel names and the transaction
 * adapters are in `@bus/postgres-notify/adapter`.
 *
 * @packageDocumentation
 */

export type { NotifyHealth } from "./listener/health.js"
export type { NotifyMode } from "./outbox/append.js"
export type { RetentionOptions } from "./outbox/retention.js"
export type { PressureOptions, PressureSnapshot } from "./pressure/monitor.js"
export { type MigrateOptions, type MigrateResult, migrate } from "./schema/migrate.js"
export type { TransactionAdapter } from "./sql/adapter.js"
export type { PostgresOutboxService } from "./store.js"
export { type PostgresOptions, postgresOutbox, postgresOutboxOf } from "./wiring.js"
