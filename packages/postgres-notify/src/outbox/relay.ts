import type { BusError, DeadLetter, Envelope, ForwardFailure, Json, LeasedEvent } from "@bus/core"
import { Effect } from "effect"
import { runQuery, type SqlExecutor } from "../sql/executor.js"
import type { OutboxQueries } from "./queries.js"

/**
 * The relay's side of the outbox (leases, completion, failures, dead letters) and
 * retention. Leases use `FOR UPDATE SKIP LOCKED`, so relays racing for rows never
 * block each other and never lease a row twice while its lease lives.
 *
 * @module
 */

const toIso = (u: unknown): string =>
  u instanceof Date ? u.toISOString() : new Date(String(u)).toISOString()

const toHeaders = (u: unknown): Record<string, string> => {
  const headers: Record<string, string> = {}
  if (typeof u === "object" && u !== null && !Array.isArray(u)) {
    for (const [k, v] of Object.entries(u)) if (typeof v === "string") headers[k] = v
  }
  return headers
}

/** Envelope of an outbox or dead-letter row. */
export const envelopeOf = (row: Record<string, unknown>): Envelope => ({
  id: String(row.id),
  tenant: String(row.tenant),
  channel: String(row.channel),
  type: String(row.type),
  data: (row.data ?? null) as Json,
  headers: toHeaders(row.headers),
  time: toIso(row.event_time),
})

/** Relay and retention operations over one executor (the store's pool). */
export const relayOps = (executor: SqlExecutor, q: OutboxQueries, pruneBatchSize: number) => {
  const lease = (
    owner: string,
    limit: number,
    leaseMs: number,
  ): Effect.Effect<ReadonlyArray<LeasedEvent>, BusError> =>
    runQuery(executor, "lease", q.lease, [
      owner,
      Math.max(1, Math.floor(limit)),
      Math.max(1, Math.floor(leaseMs)),
    ]).pipe(
      Effect.map((rows) =>
        [...rows]
          // RETURNING has no order; the relay forwards in outbox (insert) order.
          .sort((a, b) => {
            const x = BigInt(String(a.seq))
            const y = BigInt(String(b.seq))
            return x < y ? -1 : x > y ? 1 : 0
          })
          .map((row) => ({ event: envelopeOf(row), attempts: Number(row.attempts) })),
      ),
    )

  const complete = (owner: string, ids: ReadonlyArray<string>): Effect.Effect<void, BusError> =>
    ids.length === 0
      ? Effect.void
      : runQuery(executor, "complete", q.complete, [owner, [...ids]]).pipe(Effect.asVoid)

  const release = (owner: string, ids: ReadonlyArray<string>): Effect.Effect<void, BusError> =>
    ids.length === 0
      ? Effect.void
      : runQuery(executor, "release", q.release, [owner, [...ids]]).pipe(Effect.asVoid)

  const fail = (
    owner: string,
    failures: ReadonlyArray<ForwardFailure>,
    maxAttempts: number,
  ): Effect.Effect<{ readonly parked: number }, BusError> =>
    failures.length === 0
      ? Effect.succeed({ parked: 0 })
      : runQuery(executor, "fail", q.fail, [
          owner,
          failures.map((f) => f.id),
          failures.map((f) => f.error),
          failures.map((f) => f.park),
          Math.max(1, Math.floor(maxAttempts)),
        ]).pipe(Effect.map((rows) => ({ parked: Number(rows[0]?.parked ?? 0) })))

  const backlog: Effect.Effect<number, BusError> = runQuery(executor, "backlog", q.backlog).pipe(
    Effect.map((rows) => Number(rows[0]?.n ?? 0)),
  )

  const deadLetter = (letter: DeadLetter): Effect.Effect<void, BusError> => {
    const e = letter.event
    const at = Number.isNaN(Date.parse(letter.at)) ? null : letter.at
    return runQuery(executor, "deadLetter", q.deadLetter, [
      e.id,
      e.tenant,
      e.channel,
      e.type,
      JSON.stringify(e.data ?? null),
      JSON.stringify(e.headers ?? {}),
      e.time,
      letter.reason,
      letter.source,
      letter.attempts,
      at,
    ]).pipe(Effect.asVoid)
  }

  const deadLetters = (limit: number): Effect.Effect<ReadonlyArray<DeadLetter>, BusError> =>
    runQuery(executor, "deadLetters", q.deadLetters, [Math.max(1, Math.floor(limit))]).pipe(
      Effect.map((rows) =>
        rows.map((row) => ({
          event: envelopeOf(row),
          reason: String(row.reason),
          source: String(row.source),
          attempts: Number(row.attempts),
          at: toIso(row.at),
        })),
      ),
    )

  // In batches, each its own short statement, so pruning a large backlog never holds
  // many row locks or one long transaction (which would itself hold back readers).
  const prune = (
    olderThanMs: number,
    options: { readonly keepUnforwarded: boolean },
  ): Effect.Effect<number, BusError> =>
    Effect.gen(function* () {
      let total = 0
      for (;;) {
        const rows = yield* runQuery(executor, "prune", q.prune, [
          Math.max(0, Math.floor(olderThanMs)),
          options.keepUnforwarded,
          pruneBatchSize,
        ])
        const deleted = Number(rows[0]?.deleted ?? 0)
        total += deleted
        if (deleted < pruneBatchSize) return total
      }
    })

  return { lease, complete, release, fail, backlog, deadLetter, deadLetters, prune }
}
