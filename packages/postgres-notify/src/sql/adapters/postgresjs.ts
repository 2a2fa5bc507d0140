import { NotInTransaction } from "@bus/core"
import { Effect, Predicate } from "effect"
import { toBusError } from "../../errors.js"
import type { TransactionAdapter } from "../adapter.js"
import type { SqlExecutor } from "../executor.js"

/**
 * Adapter for postgres.js (`postgres` on npm): the `tx` handed to
 * `sql.begin(async (tx) => …)`, or a reserved connection (`await sql.reserve()`) on
 * which the caller ran `BEGIN`. The root `sql` is refused: each of its queries may run
 * on another pooled connection, outside any transaction.
 *
 * Recognised by shape (a tagged-template function with `unsafe`, `array` and `json`),
 * so no dependency on postgres.js is needed.
 *
 * @module
 */

interface PostgresJsLike {
  (...args: Array<unknown>): unknown
  unsafe: (
    text: string,
    params?: Array<unknown>,
    options?: { readonly prepare?: boolean },
  ) => Promise<ReadonlyArray<Record<string, unknown>>>
  savepoint?: unknown
  begin?: unknown
  release?: unknown
}

/** True for any postgres.js `sql` object: root, transaction or reserved. */
export const isPostgresJs = (u: unknown): u is PostgresJsLike =>
  Predicate.isFunction(u) &&
  Predicate.isFunction((u as { unsafe?: unknown }).unsafe) &&
  Predicate.isFunction((u as { array?: unknown }).array) &&
  Predicate.isFunction((u as { json?: unknown }).json)

// Named statements are prepared (postgres.js keys its per-connection cache by the text and
// parameter types, so the name is not needed). An unprepared statement with parameters
// costs postgres.js a describe round trip first; a prepared one only the first time.
const executorOf = (sql: PostgresJsLike): SqlExecutor => ({
  query: async (text, params = []) => ({ rows: await sql.unsafe(text, [...params]) }),
  prepared: async (_name, text, params) => ({ rows: await sql.unsafe(text, [...params], { prepare: true }) }),
})

// A reserved connection says nothing about its transaction state: ask the server.
// SAVEPOINT fails outside a transaction block (25P01) and in a failed one (25P02).
const probe = (sql: PostgresJsLike) =>
  Effect.tryPromise({
    try: async () => {
      await sql.unsafe("SAVEPOINT bus_probe")
      await sql.unsafe("RELEASE SAVEPOINT bus_probe")
    },
    catch: (cause) => {
      const code = (cause as { code?: unknown } | null)?.code
      if (code === "25P01" || code === "25P02") {
        return new NotInTransaction({
          message:
            code === "25P01"
              ? "the reserved postgres.js connection is not inside a transaction; run BEGIN first, or use sql.begin(async (tx) => publish(tx, …))"
              : "the postgres.js transaction has already failed",
        })
      }
      return toBusError(cause, "checking the caller's transaction")
    },
  })

/** The postgres.js adapter. */
export const postgresJsAdapter: TransactionAdapter = {
  name: "postgres.js",
  open: (tx) => {
    if (!isPostgresJs(tx)) return undefined
    // Only the scope of sql.begin / tx.savepoint has `savepoint`: it is always inside a transaction.
    if (Predicate.isFunction(tx.savepoint)) return Effect.succeed(executorOf(tx))
    if (Predicate.isFunction(tx.begin)) {
      return Effect.fail(
        new NotInTransaction({
          message:
            "publish needs the transaction of sql.begin(async (tx) => publish(tx, event)), not the root postgres.js sql",
        }),
      )
    }
    return probe(tx).pipe(Effect.as(executorOf(tx)))
  },
}
