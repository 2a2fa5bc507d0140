import { NotInTransaction } from "@bus/core"
import { type Context, Effect, Option, Predicate } from "effect"
import type { TransactionAdapter } from "../adapter.js"
import type { SqlExecutor } from "../executor.js"

/**
 * Adapter for Effect's `SqlClient` (`effect/sql`, e.g. from `@effect/sql-pg`): pass the
 * client itself, from inside `sql.withTransaction(…)`:
 *
 * ```ts
 * import { type EventInput, Publisher } from "@bus/core"
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 *
 * const markPaid = (id: number, event: EventInput) =>
 *   Effect.gen(function* () {
 *     const sql = yield* SqlClient.SqlClient
 *     const publisher = yield* Publisher
 *     yield* sql.withTransaction(Effect.gen(function* () {
 *       yield* sql`UPDATE orders SET paid = true WHERE id = ${id}`
 *       yield* publisher.publish(sql, event)
 *     }))
 *   })
 * ```
 *
 * An Effect SQL transaction lives in the fiber's context (the client's
 * `transactionService`), not in the client object. The adapter reads that context in the
 * fiber that publishes and runs the statement on the transaction's connection; outside
 * `withTransaction` there is none and publish fails with `NotInTransaction`. So publish
 * from the same fiber (through the Effect API); the Promise facade runs on its own fiber
 * and cannot see an Effect transaction.
 *
 * @module
 */

const typeId = "~effect/sql/SqlClient"

interface ConnectionLike {
  readonly execute?: (
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: undefined,
  ) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, unknown>
  readonly executeUnprepared: (
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: undefined,
  ) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, unknown>
}

interface SqlClientLike {
  readonly transactionService: Context.Key<unknown, readonly [ConnectionLike, number]>
}

/** True for an Effect `SqlClient`. */
export const isEffectSqlClient = (u: unknown): u is SqlClientLike =>
  (Predicate.isFunction(u) || Predicate.isObject(u)) &&
  (u as Record<string, unknown>)[typeId] === typeId &&
  // A Context key: an object or (for service classes) a function.
  (Predicate.isObject((u as { transactionService?: unknown }).transactionService) ||
    Predicate.isFunction((u as { transactionService?: unknown }).transactionService))

// Named statements go through the connection's prepared path (the driver's own statement
// cache), everything else unprepared.
const executorOf = (connection: ConnectionLike): SqlExecutor => {
  const base: SqlExecutor = {
    run: (text, params) =>
      Effect.map(connection.executeUnprepared(text, params, undefined), (rows) => ({ rows })),
    query: async (text, params = []) => ({
      rows: await Effect.runPromise(connection.executeUnprepared(text, params, undefined)),
    }),
  }
  if (!hasExecute(connection)) return base
  return {
    ...base,
    runPrepared: (_name, text, params) =>
      Effect.map(connection.execute(text, params, undefined), (rows) => ({ rows })),
  }
}

const hasExecute = (c: ConnectionLike): c is ConnectionLike & Required<Pick<ConnectionLike, "execute">> =>
  Predicate.isFunction(c.execute)

/** The Effect SqlClient adapter. */
export const effectSqlAdapter: TransactionAdapter = {
  name: "effect-sql",
  open: (tx) => {
    if (!isEffectSqlClient(tx)) return undefined
    return Effect.serviceOption(tx.transactionService).pipe(
      Effect.flatMap((current) =>
        Option.isSome(current)
          ? Effect.succeed(executorOf(current.value[0]))
          : Effect.fail(
              new NotInTransaction({
                message:
                  "the Effect SqlClient is not inside a transaction in this fiber: publish inside sql.withTransaction(…), from the same fiber (the Effect API, not the Promise facade)",
              }),
            ),
      ),
    )
  },
}
