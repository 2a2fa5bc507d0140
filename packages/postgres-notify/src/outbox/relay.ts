import type { BusError } from "@bus/core"
import type { DeadLetter, Envelope, GroupKey, Json } from "@bus/core/adapter"
import { Effect } from "effect"
import { runQuery, type SqlExecutor } from "../sql/executor.js"
import type { OutboxQueries } from "./queries.js"

/**
 * Dead letters, consumer groups' inboxes and retention over the store's pool. (The relay's
 * log reads and partition leases are in `relayLog.ts`.)
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

/** Dead-letter, inbox and retention operations over one executor (the store's pool). */
export const relayOps = (executor: SqlExecutor, q: OutboxQueries, pruneBatchSize: number) => {
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

  const handled = (
    key: GroupKey,
    ids: ReadonlyArray<string>,
  ): Effect.Effect<ReadonlySet<string>, BusError> =>
    ids.length === 0
      ? Effect.succeed(new Set<string>())
      : runQuery(executor, "inbox lookup", q.handled, [key.tenant, key.channel, key.group, [...ids]]).pipe(
          Effect.map((rows) => new Set(rows.map((r) => String(r.id)))),
        )

  const markHandled = (key: GroupKey, ids: ReadonlyArray<string>): Effect.Effect<void, BusError> =>
    ids.length === 0
      ? Effect.void
      : runQuery(executor, "inbox write", q.markHandled, [key.tenant, key.channel, key.group, [...ids]]).pipe(
          Effect.asVoid,
        )

  const groupCursor = (key: GroupKey): Effect.Effect<string | undefined, BusError> =>
    runQuery(executor, "group cursor", q.groupCursor, [key.tenant, key.channel, key.group]).pipe(
      Effect.map((rows) => {
        const cursor = rows[0]?.cursor
        return cursor === undefined || cursor === null || cursor === "beginning" ? undefined : String(cursor)
      }),
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
        if (deleted < pruneBatchSize) break
      }
      // Inbox entries of events handled that long ago: their events are gone from the outbox.
      for (;;) {
        const rows = yield* runQuery(executor, "prune inbox", q.pruneInbox, [
          Math.max(0, Math.floor(olderThanMs)),
          pruneBatchSize,
        ])
        if (Number(rows[0]?.deleted ?? 0) < pruneBatchSize) break
      }
      return total
    })

  return {
    deadLetter,
    deadLetters,
    prune,
    handled,
    markHandled,
    groupCursor,
  }
}
