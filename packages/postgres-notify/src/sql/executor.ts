import { Effect } from "effect"
import { toBusError } from "../errors.js"

/**
 * The one thing the outbox needs from a database driver: run a parameterised statement
 * and get its rows. Every driver adapter (pg today; postgres.js, Prisma, Drizzle,
 * Kysely, Effect SqlClient later) reduces the caller's transaction to this.
 *
 * @module
 */

/** Rows of one statement, as plain objects keyed by column name. */
export interface QueryResultLike {
  readonly rows: ReadonlyArray<Record<string, unknown>>
}

/**
 * A connection (or transaction) that runs one statement with `$1…$n` parameters.
 * Parameters are strings, numbers, booleans, null or arrays of those.
 */
export interface SqlExecutor {
  readonly query: (text: string, params?: ReadonlyArray<unknown>) => Promise<QueryResultLike>
  /** Effect-native form, preferred when present (runs in the calling fiber, interruptible). */
  readonly run?: (text: string, params: ReadonlyArray<unknown>) => Effect.Effect<QueryResultLike, unknown>
  /**
   * Runs a statement the driver may keep prepared on the connection under `name` (parsed
   * and planned once per connection instead of on every call). Drivers that cannot name
   * statements leave this out and {@link runPrepared} falls back to `run` / `query`.
   */
  readonly prepared?: (name: string, text: string, params: ReadonlyArray<unknown>) => Promise<QueryResultLike>
  /** Effect-native form of {@link SqlExecutor.prepared}, preferred when present. */
  readonly runPrepared?: (
    name: string,
    text: string,
    params: ReadonlyArray<unknown>,
  ) => Effect.Effect<QueryResultLike, unknown>
}

/** A statement with the name it is prepared under (unique per text: see `queries.ts`). */
export interface Statement {
  readonly name: string
  readonly text: string
}

/** Runs one statement, mapping driver failures to the @bus error family; `what` names the operation in errors. */
export const runQuery = (
  executor: SqlExecutor,
  what: string,
  text: string,
  params: ReadonlyArray<unknown> = [],
): Effect.Effect<ReadonlyArray<Record<string, unknown>>, ReturnType<typeof toBusError>> =>
  (executor.run
    ? executor.run(text, params).pipe(Effect.mapError((cause) => toBusError(cause, what)))
    : Effect.tryPromise({
        try: () => executor.query(text, params),
        catch: (cause) => toBusError(cause, what),
      })
  ).pipe(Effect.map((result) => result.rows))

/** Runs `statement` prepared where the driver can, as {@link runQuery} otherwise. */
export const runPrepared = (
  executor: SqlExecutor,
  what: string,
  statement: Statement,
  params: ReadonlyArray<unknown>,
): Effect.Effect<ReadonlyArray<Record<string, unknown>>, ReturnType<typeof toBusError>> => {
  const { runPrepared: run, prepared } = executor
  if (run !== undefined) {
    return run(statement.name, statement.text, params).pipe(
      Effect.mapError((cause) => toBusError(cause, what)),
      Effect.map((result) => result.rows),
    )
  }
  if (prepared === undefined) return runQuery(executor, what, statement.text, params)
  return Effect.tryPromise({
    try: () => prepared(statement.name, statement.text, params),
    catch: (cause) => toBusError(cause, what),
  }).pipe(Effect.map((result) => result.rows))
}
