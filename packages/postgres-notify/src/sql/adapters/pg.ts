import { NotInTransaction } from "@bus/core"
import { Effect, Predicate } from "effect"
import { toBusError } from "../../errors.js"
import type { TransactionAdapter } from "../adapter.js"
import type { SqlExecutor } from "../executor.js"

/**
 * Adapter for node-postgres (`pg`): a `Client` or a `PoolClient` on which the caller has
 * run `BEGIN`. A `Pool` is refused, because each `pool.query` may run on another
 * connection and outside any transaction, which would make the event independent of the
 * business rows.
 *
 * Objects are recognised by shape, not `instanceof`, so a `pg` copy other than ours
 * (another version in the application's `node_modules`) works too.
 *
 * @module
 */

interface PgClientLike {
  query: {
    (text: string, values?: Array<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
    (config: {
      name: string
      text: string
      values: Array<unknown>
    }): Promise<{
      rows: Array<Record<string, unknown>>
    }>
  }
  connect: (...args: Array<unknown>) => unknown
  getTransactionStatus?: () => string | null
  readyForQuery?: unknown
  _activeQuery?: unknown
  _queryQueue?: ReadonlyArray<unknown>
  _sentQueryQueue?: ReadonlyArray<unknown>
}

/** True for a `pg.Pool` (or pg-pool compatible pool). */
export const isPgPool = (u: unknown): boolean =>
  Predicate.isObject(u) &&
  Predicate.isFunction((u as { connect?: unknown }).connect) &&
  Predicate.isFunction((u as { query?: unknown }).query) &&
  Predicate.isNumber((u as { totalCount?: unknown }).totalCount) &&
  Predicate.isNumber((u as { idleCount?: unknown }).idleCount)

/** True for a `pg.Client` or a `PoolClient`. */
export const isPgClient = (u: unknown): u is PgClientLike =>
  Predicate.isObject(u) &&
  !isPgPool(u) &&
  Predicate.isFunction((u as { query?: unknown }).query) &&
  Predicate.isFunction((u as { connect?: unknown }).connect)

const poolMessage =
  "publish needs the client of an open transaction, not a pg.Pool: " +
  "const client = await pool.connect(); await client.query('BEGIN'); await publish(client, event); await client.query('COMMIT')"

const notInTransaction = (detail: string) =>
  new NotInTransaction({
    message: `${detail}; run BEGIN on the client first (publish writes the event in your transaction, so it commits or rolls back with your rows)`,
  })

const sqlStateOf = (cause: unknown): unknown => (cause as { code?: unknown } | null)?.code

/**
 * What pg last heard from the server (`I` idle, `T` in a transaction block, `E` in a
 * failed one), but only when the connection is settled: the last message was
 * ReadyForQuery and nothing is queued or running. Otherwise the status may be about to
 * change (a `BEGIN` sent without awaiting it; a failed statement whose promise rejects
 * on ErrorResponse, before the ReadyForQuery that says `E`), and we must ask.
 */
const settledStatus = (client: PgClientLike): string | undefined => {
  if (!Predicate.isFunction(client.getTransactionStatus)) return undefined
  if (client.readyForQuery !== true) return undefined
  if (client._activeQuery !== null && client._activeQuery !== undefined) return undefined
  if (!Array.isArray(client._queryQueue) || client._queryQueue.length > 0) return undefined
  if (Array.isArray(client._sentQueryQueue) && client._sentQueryQueue.length > 0) return undefined
  const status = client.getTransactionStatus()
  return status === "I" || status === "T" || status === "E" ? status : undefined
}

/**
 * Proves `client` is inside an open transaction block. Fast path: pg's own record of
 * the last ReadyForQuery status (no round trip). Otherwise a `SAVEPOINT`, which
 * Postgres refuses outside a transaction block (25P01) and in a failed one (25P02), and
 * which is released at once so it leaves no trace in the caller's transaction.
 */
export const ensureInTransaction = (
  client: PgClientLike,
): Effect.Effect<void, NotInTransaction | ReturnType<typeof toBusError>> => {
  const status = settledStatus(client)
  if (status === "T") return Effect.void
  if (status === "I") return Effect.fail(notInTransaction("the pg client is not inside a transaction"))
  if (status === "E") {
    return Effect.fail(
      notInTransaction(
        "the pg client's transaction has already failed (roll it back and retry the unit of work)",
      ),
    )
  }
  return Effect.tryPromise({
    try: () => client.query("SAVEPOINT bus_probe; RELEASE SAVEPOINT bus_probe"),
    catch: (cause) => {
      const code = sqlStateOf(cause)
      if (code === "25P01") return notInTransaction("the pg client is not inside a transaction")
      if (code === "25P02") return notInTransaction("the pg client's transaction has already failed")
      return toBusError(cause, "checking the caller's transaction")
    },
  }).pipe(Effect.asVoid)
}

/**
 * An executor over a pg client, for statements inside the caller's transaction. Named
 * statements become pg prepared statements: parsed and planned once per connection.
 */
export const pgExecutor = (client: PgClientLike): SqlExecutor => ({
  query: (text, params = []) => client.query(text, [...params]),
  prepared: (name, text, params) => client.query({ name, text, values: [...params] }),
})

// A pool's clients live as long as the pool and publish again and again: one executor each,
// kept while the client is.
const executors = new WeakMap<PgClientLike, SqlExecutor>()

const executorOf = (client: PgClientLike): SqlExecutor => {
  let executor = executors.get(client)
  if (executor === undefined) {
    executor = pgExecutor(client)
    executors.set(client, executor)
  }
  return executor
}

/** The `pg` adapter: `Client` / `PoolClient` inside `BEGIN … COMMIT`. */
export const pgAdapter: TransactionAdapter = {
  name: "pg",
  open: (tx) => {
    if (isPgPool(tx)) return Effect.fail(new NotInTransaction({ message: poolMessage }))
    if (!isPgClient(tx)) return undefined
    const executor = executorOf(tx)
    // The usual case, settled inside BEGIN, answered without building the check's effect.
    return settledStatus(tx) === "T"
      ? Effect.succeed(executor)
      : ensureInTransaction(tx).pipe(Effect.as(executor))
  },
}
