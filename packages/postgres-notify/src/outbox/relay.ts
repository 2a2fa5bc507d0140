import type { BusError, DeadLetter, Envelope, ForwardFailure, GroupKey, Json, LeasedEvent } from "@bus/core"
import { Effect } from "effect"
import { runQuery, type SqlExecutor } from "../sql/executor.js"
import { encodeCursor, encodePosition, parsePgSnapshot, snapshotBelow } from "./cursor.js"
import type { OutboxQueries } from "./queries.js"
import { compactEpoch } from "./read.js"

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
  ): Effect.Effect<ReadonlyArray<LeasedEvent>, BusError> => {
    const n = Math.max(1, Math.floor(limit))
    return runQuery(executor, "lease", q.lease, [owner, n, Math.max(1, Math.floor(leaseMs))]).pipe(
      Effect.map((rows) => withFrontiers(rows, n)),
    )
  }

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
    lease,
    complete,
    release,
    fail,
    backlog,
    deadLetter,
    deadLetters,
    prune,
    handled,
    markHandled,
    groupCursor,
  }
}

/**
 * Leased rows with their outbox positions and frontiers (`LeasedEvent`).
 *
 * The relay sends each address's rows in lease order, (xid, seq). Once row k of address A
 * is on the broker, every row of A visible in the lease statement's snapshot is there too,
 * except rows not sent yet: A's later leased rows, A's candidates the lease left out, and
 * (when the candidate list was cut at the limit) rows after the last candidate, whose xid
 * is at least the last candidate's. So the frontier of row k is that snapshot below the
 * smallest xid among them: everything it covers reached the broker at or before row k.
 */
const maxFrontierXip = 8

const withFrontiers = (rows: ReadonlyArray<Record<string, unknown>>, limit: number): Array<LeasedEvent> => {
  const info = rows.find((r) => Number(r.kind) === 3)
  const picked = rows
    .filter((r) => Number(r.kind) === 1)
    .map((r) => ({ row: r, xid: BigInt(String(r.xid)), seq: BigInt(String(r.seq)) }))
    // RETURNING has no order; the relay forwards in lease order.
    .sort((a, b) => (a.xid < b.xid ? -1 : a.xid > b.xid ? 1 : a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0))
  if (info === undefined || info.snapshot === null || info.snapshot === undefined) {
    return picked.map(({ row }) => ({ event: envelopeOf(row), attempts: Number(row.attempts) }))
  }
  const epoch = compactEpoch(String(info.epoch))
  const snapshot = parsePgSnapshot(String(info.snapshot))
  const cut = Number(info.candidates) >= limit && info.xid !== null && info.xid !== undefined
  const unscanned = cut ? BigInt(String(info.xid)) : undefined
  const key = (r: Record<string, unknown>) => `${String(r.tenant)}\u0000${String(r.channel)}`
  // Per address: the smallest xid among the candidates left out.
  const leftOut = new Map<string, bigint>()
  for (const r of rows) {
    if (Number(r.kind) !== 2) continue
    const xid = BigInt(String(r.xid))
    const k = key(r)
    const seen = leftOut.get(k)
    if (seen === undefined || xid < seen) leftOut.set(k, xid)
  }
  const min = (a: bigint | undefined, b: bigint | undefined) =>
    a === undefined ? b : b === undefined ? a : a < b ? a : b
  // From the end of each address's run: the smallest xid still to come after each row.
  const frontier = new Map<(typeof picked)[number], string>()
  const after = new Map<string, bigint | undefined>()
  for (let i = picked.length - 1; i >= 0; i--) {
    const p = picked[i]!
    const k = key(p.row)
    const bound = min(min(unscanned, leftOut.get(k)), after.has(k) ? after.get(k) : undefined)
    let at = bound === undefined ? snapshot : snapshotBelow(snapshot, bound)
    // Cursors travel in broker headers and SSE ids: keep them short. Below the oldest
    // in-progress transaction the snapshot lists none (it covers less, never more).
    if (at.xip.length > maxFrontierXip) at = snapshotBelow(at, at.xip[0]!)
    frontier.set(p, encodeCursor({ kind: "steady", epoch, at }))
    after.set(k, min(after.get(k), p.xid))
  }
  return picked.map((p) => ({
    event: envelopeOf(p.row),
    attempts: Number(p.row.attempts),
    position: encodePosition(epoch, { xid: p.xid, seq: p.seq }),
    frontier: frontier.get(p)!,
  }))
}
