/**
 * @bus/postgres-notify/adapter — the parts of the Postgres outbox for tools, tests and
 * other adapters: the store outside a bus (Effect and Promise), its cursor codec, NOTIFY
 * channel names, dead-letter replay, pressure SQL, the schema's migrations, and the
 * transaction adapters. Applications use `postgresOutbox(…)` and `migrate` from
 * `@bus/postgres-notify`.
 *
 * @packageDocumentation
 */

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
} from "./cursor.js"
export { invalidEventIds, type ReplayResult, replayDeadLetters } from "./deadLetters.js"
export { isConnectionError, toBusError, transportName } from "./errors.js"
export {
  addressChannel,
  decodePayload,
  encodePayload,
  relayChannel,
} from "./names.js"
export type { PostgresOutboxOptions } from "./options.js"
export type { NotifyBatcher, TransactionOptions } from "./outbox/batched.js"
export { maxPageSize } from "./outbox/read.js"
export {
  defaultRetentionIntervalMs,
  defaultRetentionMaxAgeMs,
  type RetentionStatus,
} from "./outbox/retention.js"
export { pressureMetrics, pressureSql } from "./pressure/monitor.js"
export { defaultSchema, validateSchemaName } from "./schema/identifier.js"
export { migrateEffect, migrationSql, rotateEpoch } from "./schema/migrate.js"
export { latestVersion, type Migration, migrations } from "./schema/migrations.js"
export { drizzleAdapter, isDrizzle } from "./sql/adapters/drizzle.js"
export { effectSqlAdapter, isEffectSqlClient } from "./sql/adapters/effectSql.js"
export { isKysely, kyselyAdapter } from "./sql/adapters/kysely.js"
export { ensureInTransaction, isPgClient, isPgPool, pgAdapter } from "./sql/adapters/pg.js"
export { isPostgresJs, postgresJsAdapter } from "./sql/adapters/postgresjs.js"
export { isPrisma, prismaAdapter } from "./sql/adapters/prisma.js"
export type { QueryResultLike, SqlExecutor } from "./sql/executor.js"
export {
  builtinAdapters,
  createPostgresOutboxStore,
  makePostgresOutboxStore,
  PostgresOutbox,
  type PostgresOutboxHandle,
  postgresOutboxLayer,
  relayWakeupAddress,
} from "./store.js"
