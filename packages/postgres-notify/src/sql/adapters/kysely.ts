import { NotInTransaction } from "@bus/core"
import { Effect, Predicate } from "effect"
import type { TransactionAdapter } from "../adapter.js"
import type { SqlExecutor } from "../executor.js"

/**
 * Adapter for Kysely (any dialect over Postgres, e.g. `PostgresDialect` over `pg`): the
 * `trx` of `db.transaction().execute(async (trx) => …)`, or a controlled transaction
 * (`await db.startTransaction().execute()`) before it commits or rolls back. The root
 * `Kysely` instance is refused: its queries run on any pooled connection.
 *
 * Statements go through the transaction's own executor (`trx.executeQuery`) as a raw
 * compiled query, the structure Kysely's `CompiledQuery.raw(sql, parameters)` builds, so
 * they run on the transaction's connection; Kysely itself is not imported.
 *
 * @module
 */

interface KyselyLike {
  readonly isTransaction: boolean
  readonly executeQuery: (
    query: unknown,
  ) => Promise<{ readonly rows: ReadonlyArray<Record<string, unknown>> }>
  readonly transaction: unknown
  readonly selectFrom: unknown
  readonly isCommitted?: unknown
  readonly isRolledBack?: unknown
}

/** True for a `Kysely` instance or one of its transactions. */
export const isKysely = (u: unknown): u is KyselyLike =>
  Predicate.isObject(u) &&
  Predicate.isBoolean((u as { isTransaction?: unknown }).isTransaction) &&
  Predicate.isFunction((u as { executeQuery?: unknown }).executeQuery) &&
  Predicate.isFunction((u as { selectFrom?: unknown }).selectFrom) &&
  Predicate.isFunction((u as { transaction?: unknown }).transaction)

let queryCounter = 0

// What `CompiledQuery.raw(sql, parameters)` returns: a RawNode as the query tree, so
// plugins that look at the tree see an opaque raw statement.
const rawQuery = (sql: string, parameters: ReadonlyArray<unknown>) => ({
  sql,
  parameters: Object.freeze([...parameters]),
  query: Object.freeze({
    kind: "RawNode",
    sqlFragments: Object.freeze([sql]),
    parameters: Object.freeze([]),
  }),
  queryId: { queryId: `bus${(++queryCounter).toString(36)}` },
})

const executorOf = (trx: KyselyLike): SqlExecutor => ({
  query: async (text, params = []) => {
    const result = await trx.executeQuery(rawQuery(text, params))
    return { rows: result.rows }
  },
})

/** The Kysely adapter. */
export const kyselyAdapter: TransactionAdapter = {
  name: "kysely",
  open: (tx) => {
    if (!isKysely(tx)) return undefined
    if (!tx.isTransaction) {
      return Effect.fail(
        new NotInTransaction({
          message:
            "publish needs the trx of db.transaction().execute(async (trx) => publish(trx, event)), not the Kysely instance: its queries run on any pooled connection, outside your transaction",
        }),
      )
    }
    if (tx.isCommitted === true || tx.isRolledBack === true) {
      return Effect.fail(
        new NotInTransaction({
          message: "the Kysely controlled transaction has already committed or rolled back",
        }),
      )
    }
    return Effect.succeed(executorOf(tx))
  },
}
