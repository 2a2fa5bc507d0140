/**
 * @bus/postgres-notify — the Postgres outbox (schema, migrations, transactional append,
 * snapshot-safe reads) and LISTEN/NOTIFY wake-ups for the @bus event bus.
 *
 * @packageDocumentation
 */

export { isConnectionError, toBusError, transportName } from "./errors.js"
export type { NotifyHealth } from "./listener/health.js"
export type { NotifyMode } from "./outbox/append.js"
export type { NotifyBatcher, TransactionOptions } from "./outbox/batched.js"
export {
  addressChannel,
  decodePayload,
  encodePayload,
  relayChannel,
} from "./outbox/channels.js"
export {
  type Cursor,
  decodeCursor,
  emptySnapshot,
  encodeCursor,
  isExpired,
  isVisible,
  type Position,
  parsePgSnapshot,
  type Snapshot,
} from "./outbox/cursor.js"
export { invalidEventIds, type ReplayResult, replayDeadLetters } from "./outbox/deadLetters.js"
export type { PostgresOutboxOptions } from "./outbox/options.js"
export {
  builtinAdapters,
  createPostgresOutboxStore,
  createTransactionRunner,
  makePostgresOutboxStore,
  PostgresOutbox,
  type PostgresOutboxHandle,
  type PostgresOutboxService,
  postgresOutboxLayer,
  relayWakeupAddress,
} from "./outbox/PostgresOutboxStore.js"
export { maxPageSize } from "./outbox/read.js"
export {
  defaultRetentionIntervalMs,
  defaultRetentionMaxAgeMs,
  type RetentionOptions,
  type RetentionStatus,
} from "./outbox/retention.js"
export {
  notifyModeFor,
  type PostgresNotify,
  type PostgresNotifyOptions,
  postgresNotify,
} from "./postgresNotify.js"
export {
  type PressureOptions,
  type PressureSnapshot,
  pressureMetrics,
  pressureSql,
} from "./pressure/monitor.js"
export { defaultSchema, validateSchemaName } from "./schema/identifier.js"
export {
  type MigrateOptions,
  type MigrateResult,
  migrate,
  migrateEffect,
  migrationSql,
  rotateEpoch,
} from "./schema/migrate.js"
export { latestVersion, type Migration, migrations } from "./schema/migrations.js"
export type { TransactionAdapter } from "./sql/adapter.js"
export { drizzleAdapter, isDrizzle } from "./sql/adapters/drizzle.js"
export { effectSqlAdapter, isEffectSqlClient } from "./sql/adapters/effectSql.js"
export { isKysely, kyselyAdapter } from "./sql/adapters/kysely.js"
export { ensureInTransaction, isPgClient, isPgPool, pgAdapter } from "./sql/adapters/pg.js"
export { isPostgresJs, postgresJsAdapter } from "./sql/adapters/postgresjs.js"
export { isPrisma, prismaAdapter } from "./sql/adapters/prisma.js"
export type { QueryResultLike, SqlExecutor } from "./sql/executor.js"
