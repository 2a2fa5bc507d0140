import { NotInTransaction } from "@bus/core"
import { Effect, Predicate } from "effect"
import type { TransactionAdapter } from "../adapter.js"
import type { SqlExecutor } from "../executor.js"

/**
 * Adapter for Prisma interactive transactions: the `tx` of
 * `prisma.$transaction(async (tx) => …)` (Prisma 5-7; with Prisma 7 the client runs over a
 * driver adapter such as `@prisma/adapter-pg`). Statements run through the documented
 * `tx.$queryRawUnsafe(sql, ...values)`, which Prisma sends on the transaction's
 * connection. The root `PrismaClient` is refused: outside `$transaction` each raw
 * query is its own transaction.
 *
 * Recognised by shape, so the adapter needs no Prisma import.
 *
 * @module
 */

interface PrismaLike {
  readonly $queryRawUnsafe: (sql: string, ...values: Array<unknown>) => Promise<unknown>
  readonly $executeRawUnsafe: unknown
  readonly $connect?: unknown
}

/** True for a Prisma client or interactive-transaction client. */
export const isPrisma = (u: unknown): u is PrismaLike =>
  Predicate.isObject(u) &&
  Predicate.isFunction((u as { $queryRawUnsafe?: unknown }).$queryRawUnsafe) &&
  Predicate.isFunction((u as { $executeRawUnsafe?: unknown }).$executeRawUnsafe)

const executorOf = (tx: PrismaLike): SqlExecutor => ({
  query: async (text, params = []) => {
    const rows = await tx.$queryRawUnsafe(text, ...params)
    return { rows: Array.isArray(rows) ? (rows as Array<Record<string, unknown>>) : [] }
  },
})

/** The Prisma adapter. */
export const prismaAdapter: TransactionAdapter = {
  name: "prisma",
  open: (tx) => {
    if (!isPrisma(tx)) return undefined
    // Prisma strips $connect, $disconnect, $on, $use and $extends from the client it
    // hands to an interactive transaction (Prisma 7 keeps $transaction there, for nesting).
    if (Predicate.isFunction(tx.$connect)) {
      return Effect.fail(
        new NotInTransaction({
          message:
            "publish needs the tx of prisma.$transaction(async (tx) => publish(tx, event)), not the PrismaClient: outside $transaction every query commits on its own",
        }),
      )
    }
    return Effect.succeed(executorOf(tx))
  },
}
