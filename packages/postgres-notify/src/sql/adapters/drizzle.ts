import { NotInTransaction } from "@bus/core"
import { Effect, Predicate } from "effect"
import type { TransactionAdapter } from "../adapter.js"
import { isPgPool, pgAdapter } from "./pg.js"
import { postgresJsAdapter } from "./postgresjs.js"

/**
 * Adapter for Drizzle ORM over `pg` (`drizzle-orm/node-postgres`) or postgres.js
 * (`drizzle-orm/postgres-js`): the `tx` of `db.transaction(async (tx) => …)`.
 *
 * A Drizzle transaction runs on one driver connection, its session's `client` (the
 * `PoolClient` that ran `BEGIN`, or postgres.js's transaction `sql`). The adapter hands
 * that connection to the `pg` / postgres.js adapter, which checks the transaction is open
 * and runs the statement on it. The root `db` is refused when it sits on a pool.
 *
 * @module
 */

interface DrizzleLike {
  readonly session: { readonly client: unknown }
  readonly execute: unknown
  readonly transaction: unknown
  readonly rollback?: unknown
}

/** True for a Drizzle Postgres database or transaction (recognised by shape). */
export const isDrizzle = (u: unknown): u is DrizzleLike => {
  if (!Predicate.isObject(u)) return false
  const session = (u as { session?: unknown }).session
  return (
    Predicate.isObject(session) &&
    "client" in session &&
    Predicate.isFunction((u as { execute?: unknown }).execute) &&
    Predicate.isFunction((u as { transaction?: unknown }).transaction) &&
    Predicate.isObject((u as { dialect?: unknown }).dialect)
  )
}

const rootMessage =
  "publish needs the tx of db.transaction(async (tx) => publish(tx, event)), not the Drizzle db: its queries run on any pooled connection, outside your transaction"

/** The Drizzle adapter. */
export const drizzleAdapter: TransactionAdapter = {
  name: "drizzle",
  open: (tx) => {
    if (!isDrizzle(tx)) return undefined
    const client = tx.session.client
    // Only a transaction has rollback(); a db on a pool can never be inside one.
    const isTransaction = Predicate.isFunction(tx.rollback)
    if (!isTransaction && isPgPool(client)) return Effect.fail(new NotInTransaction({ message: rootMessage }))
    const opened = pgAdapter.open(client) ?? postgresJsAdapter.open(client)
    if (opened === undefined) {
      return Effect.fail(
        new NotInTransaction({
          message:
            "this Drizzle database runs on a driver other than pg or postgres.js; pass the driver's transaction instead",
        }),
      )
    }
    return isTransaction
      ? opened
      : opened.pipe(
          Effect.mapError((e) =>
            e._tag === "NotInTransaction" ? new NotInTransaction({ message: rootMessage }) : e,
          ),
        )
  },
}
