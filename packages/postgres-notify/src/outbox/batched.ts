import type { BusError } from "@bus/core"
import type { Address } from "@bus/core/adapter"
import { Effect, Queue, type Scope } from "effect"
import type pg from "pg"

/**
 * After-commit batched NOTIFY, for producers that let the SDK own the transaction
 * boundary. The transaction appends without NOTIFY, so its COMMIT never takes NOTIFY's
 * global commit lock; after COMMIT its addresses join a short window (default 10 ms) and
 * one statement, outside any producer transaction, sends one NOTIFY per address of the
 * window. Producers committing 5 000 times a second to one address then cost 100
 * notifying commits a second instead of 5 000.
 *
 * The price: wake-ups come up to one window later, and a process that dies between its
 * COMMIT and the window's NOTIFY sends none for it. Subscribers still get those events,
 * from the next wake-up of the address or the fallback poll; nothing is lost, since the
 * outbox rows committed with the business rows.
 *
 * @module
 */

const keyOf = (a: Address): string => `${a.tenant}\u0000${a.channel}`

/** The window that collects committed addresses and NOTIFYs them together. */
export interface NotifyBatcher {
  /** Adds the addresses of a committed transaction to the current window. */
  readonly add: (addresses: Iterable<Address>) => void
  /** Sends the window now (also runs when the store closes). */
  readonly flush: Effect.Effect<void>
  /** Windows sent so far (each one NOTIFY statement). */
  readonly windows: () => number
}

/** Starts the window in the current scope; closing the scope sends what is pending. */
export const makeNotifyBatcher = (config: {
  readonly windowMs: number
  readonly send: (addresses: ReadonlyArray<Address>) => Effect.Effect<void, BusError>
}): Effect.Effect<NotifyBatcher, never, Scope.Scope> =>
  Effect.gen(function* () {
    const pending = new Map<string, Address>()
    const trigger = yield* Queue.sliding<void>(1)
    let windows = 0
    const flush = Effect.suspend(() => {
      if (pending.size === 0) return Effect.void
      const batch = [...pending.values()]
      pending.clear()
      windows++
      // A lost wake-up is covered by the next one and by the fallback poll.
      return config
        .send(batch)
        .pipe(
          Effect.catch((e: BusError) =>
            Effect.logDebug(
              `@bus/postgres-notify: batched NOTIFY failed (the fallback poll covers it): ${e.message}`,
            ),
          ),
        )
    })
    yield* Queue.take(trigger).pipe(
      Effect.andThen(Effect.sleep(config.windowMs)),
      Effect.andThen(flush),
      Effect.forever,
      Effect.forkScoped,
    )
    yield* Effect.addFinalizer(() => flush)
    return {
      add: (addresses) => {
        let added = false
        for (const a of addresses) {
          pending.set(keyOf(a), a)
          added = true
        }
        if (added) Queue.offerUnsafe(trigger, undefined)
      },
      flush,
      windows: () => windows,
    }
  })

/** Transactions the SDK runs itself: their appends record addresses instead of sending NOTIFY. */
export type DeferredTransactions = WeakMap<object, Map<string, Address>>

/** Records `events`' addresses on a transaction the SDK owns; false when `tx` is not one. */
export const deferAddresses = (
  deferred: DeferredTransactions,
  tx: unknown,
  addresses: Iterable<Address>,
): boolean => {
  if (typeof tx !== "object" || tx === null) return false
  const touched = deferred.get(tx)
  if (!touched) return false
  for (const a of addresses) touched.set(keyOf(a), { tenant: a.tenant, channel: a.channel })
  return true
}

/** Options of a transaction the SDK runs. */
export interface TransactionOptions {
  /** Pool to take the connection from (default: the store's pool). */
  readonly pool?: pg.Pool
}

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/**
 * Runs `fn` in `BEGIN … COMMIT` on a pooled connection; appends through that client send
 * no NOTIFY, and after a successful COMMIT their addresses go to the batcher. Rolls back
 * and rethrows when `fn` throws; a transaction that Postgres rolled back at COMMIT (it had
 * failed earlier and `fn` swallowed the error) is reported as an error, not a success.
 */
export const runTransaction = async <A>(
  pool: pg.Pool,
  deferred: DeferredTransactions,
  batcher: NotifyBatcher,
  fn: (tx: pg.PoolClient) => Promise<A>,
): Promise<A> => {
  const client = await pool.connect()
  const touched = new Map<string, Address>()
  deferred.set(client, touched)
  let broken: Error | undefined
  let committed = false
  try {
    await client.query("BEGIN")
    const result = await fn(client)
    const commit = await client.query("COMMIT")
    if (commit.command === "ROLLBACK") {
      throw new Error(
        "the transaction failed before COMMIT and was rolled back (an error inside it was caught)",
      )
    }
    committed = true
    return result
  } catch (error) {
    if (!committed) {
      await client.query("ROLLBACK").catch((e: unknown) => {
        broken = new Error(messageOf(e))
      })
    }
    throw error
  } finally {
    deferred.delete(client)
    client.release(broken)
    if (committed && touched.size > 0) batcher.add(touched.values())
  }
}
