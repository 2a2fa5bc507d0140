import type { BusError } from "@bus/core"
import type { Effect } from "effect"
import type { SqlExecutor } from "./executor.js"

/**
 * How `append` finds its way into the caller's transaction: an adapter recognises one
 * driver's transaction object and turns it into a {@link SqlExecutor} bound to that
 * transaction, after checking that a transaction is really open.
 *
 * @module
 */

/** Recognises one driver's transaction objects. */
export interface TransactionAdapter {
  /** Driver name, for error messages. */
  readonly name: string
  /**
   * `undefined` when `tx` is not this driver's object (the next adapter is tried);
   * otherwise an executor inside the open transaction, or `NotInTransaction` when `tx`
   * is this driver's object but not an open transaction (a pool, an idle client).
   */
  readonly open: (tx: unknown) => Effect.Effect<SqlExecutor, BusError> | undefined
}
