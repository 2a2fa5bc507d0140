import { type BusError, ConfigError } from "@bus/core"
import { Effect } from "effect"
import pg from "pg"
import { toBusError } from "../errors.js"
import { defaultSchema, migrationLockKey, schemaName } from "./identifier.js"
import { latestVersion, migrations } from "./migrations.js"

/**
 * Applies the outbox schema. Idempotent, and safe when several processes start at
 * once: everything runs in one transaction under a transaction-scoped advisory lock
 * keyed by the schema name, so the second process waits, then finds nothing to do.
 *
 * @module
 */

/** Where to migrate: a connection string, or a pool (one connection is borrowed). */
export interface MigrateOptions {
  readonly connectionString?: string
  readonly pool?: pg.Pool
  /** Schema holding the outbox tables (default `bus`). Lower-case identifier. */
  readonly schema?: string
  /** `application_name` of the migration connection (default `bus-migrate`). */
  readonly applicationName?: string
}

/** What {@link migrate} did. */
export interface MigrateResult {
  readonly schema: string
  /** Versions applied by this call (empty when the schema was already current). */
  readonly applied: ReadonlyArray<number>
  /** Schema version after the call. */
  readonly version: number
  /** The outbox epoch (uuid); part of every cursor. */
  readonly epoch: string
}

const withClient = async <A>(
  options: MigrateOptions,
  use: (client: pg.ClientBase) => Promise<A>,
): Promise<A> => {
  if (options.pool) {
    const client = await options.pool.connect()
    // A checked-out pg client has no 'error' listener: a server restart mid-migration
    // would otherwise crash the process instead of failing this call.
    const ignore = () => {}
    client.on("error", ignore)
    try {
      return await use(client)
    } finally {
      client.removeListener("error", ignore)
      client.release()
    }
  }
  if (!options.connectionString)
    throw new ConfigError({ message: "migrate needs a connectionString or a pool" })
  const client = new pg.Client({
    connectionString: options.connectionString,
    application_name: options.applicationName ?? "bus-migrate",
  })
  client.on("error", () => {})
  await client.connect()
  try {
    return await use(client)
  } finally {
    await client.end().catch(() => {})
  }
}

const run = async (client: pg.ClientBase, schema: string): Promise<MigrateResult> => {
  const S = `"${schema}"`
  await client.query("BEGIN")
  try {
    await client.query("SELECT pg_advisory_xact_lock($1::bigint)", [migrationLockKey(schema)])
    // CREATE SCHEMA checks the CREATE privilege even when the schema exists, so a
    // runtime role without it can still "migrate" an already migrated database.
    const exists = await client.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema])
    if (exists.rowCount === 0) await client.query(`CREATE SCHEMA ${S}`)
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${S}.schema_migrations (
         version integer PRIMARY KEY,
         name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    )
    const done = await client.query<{ version: number }>(`SELECT version FROM ${S}.schema_migrations`)
    const have = new Set(done.rows.map((r) => Number(r.version)))
    const applied: Array<number> = []
    for (const m of migrations) {
      if (have.has(m.version)) continue
      await client.query(m.sql(S))
      await client.query(`INSERT INTO ${S}.schema_migrations (version, name) VALUES ($1, $2)`, [
        m.version,
        m.name,
      ])
      applied.push(m.version)
    }
    const version = Math.max(0, ...have, ...applied)
    if (applied.length > 0) await client.query(`UPDATE ${S}.meta SET schema_version = $1`, [version])
    const meta = await client.query<{ epoch: string }>(`SELECT epoch::text AS epoch FROM ${S}.meta`)
    await client.query("COMMIT")
    return { schema, applied, version, epoch: meta.rows[0]!.epoch }
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {})
    throw error
  }
}

/** Effect form of {@link migrate}. */
export const migrateEffect = (options: MigrateOptions): Effect.Effect<MigrateResult, BusError> =>
  Effect.gen(function* () {
    const schema = yield* Effect.try({
      try: () => schemaName(options.schema ?? defaultSchema).name,
      catch: (e) => (e instanceof ConfigError ? e : new ConfigError({ message: String(e) })),
    })
    const result = yield* Effect.tryPromise({
      try: () => withClient(options, (client) => run(client, schema)),
      catch: (e) => (e instanceof ConfigError ? e : toBusError(e, `migrating schema ${schema}`)),
    })
    if (result.version > latestVersion) {
      yield* Effect.logWarning(
        `@bus/postgres-notify: schema ${schema} is at version ${result.version}, newer than this package knows (${latestVersion}); upgrade @bus/postgres-notify`,
      )
    }
    return result
  })

/**
 * Creates or upgrades the outbox schema: `await migrate({ connectionString, schema: "bus" })`.
 * Safe to call at every start-up, from every process.
 */
export const migrate = (options: MigrateOptions): Promise<MigrateResult> =>
  Effect.runPromise(migrateEffect(options))

/**
 * Gives the outbox a new epoch, so every cursor issued before is refused as `foreign`.
 * Run it after restoring a backup: cursors that consumers kept from the lost history
 * would otherwise point at transaction ids that the restored database reuses.
 */
export const rotateEpoch = (options: MigrateOptions): Promise<string> =>
  Effect.runPromise(
    Effect.tryPromise({
      try: () =>
        withClient(options, async (client) => {
          const S = schemaName(options.schema ?? defaultSchema).quoted
          const r = await client.query<{ epoch: string }>(
            `UPDATE ${S}.meta SET epoch = gen_random_uuid() RETURNING epoch::text AS epoch`,
          )
          return r.rows[0]!.epoch
        }),
      catch: (e) => (e instanceof ConfigError ? e : toBusError(e, "rotating the outbox epoch")),
    }),
  )

/**
 * The full schema as one SQL script, for teams that apply migrations with their own
 * tool (Flyway, sqitch, …). Apply it once; `migrate()` will then find it current.
 */
export const migrationSql = (schema: string = defaultSchema): string => {
  const S = schemaName(schema).quoted
  const body = migrations
    .map(
      (m) =>
        `-- ${m.version}: ${m.name}\n${m.sql(S)}\nINSERT INTO ${S}.schema_migrations (version, name) VALUES (${m.version}, '${m.name}');\n`,
    )
    .join("\n")
  return `BEGIN;
CREATE SCHEMA IF NOT EXISTS ${S};
CREATE TABLE IF NOT EXISTS ${S}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
${body}
COMMIT;
`
}
