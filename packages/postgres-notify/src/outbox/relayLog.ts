import { type BusError, CursorInvalid } from "@bus/core"
import {
  type Address,
  checkAddress,
  type Envelope,
  type Json,
  type RelayClaim,
  type RelayedEvent,
  type RelayLog,
  type RelayPage,
  type RelayState,
} from "@bus/core/adapter"
import { Effect } from "effect"
import {
  type Cursor,
  decodeCursor,
  encodeCursor,
  encodePosition,
  isExpired,
  type Position,
  pagingCursors,
  parsePgSnapshot,
  readParams,
  type Snapshot,
  xipParam,
} from "../cursor.js"
import { runPrepared, runQuery, type SqlExecutor } from "../sql/executor.js"
import { relayPartitionOf } from "./hashtext.js"
import { compactEpoch, maxPageSize } from "./read.js"
import type { RelayQueries } from "./relayQueries.js"

/**
 * The relay's side of the Postgres outbox (schema v4): partitions of addresses read as a
 * log by the snapshot-safe cursor subscribers use, one stored position per partition, and
 * partition leases in `relay_partitions`. Producers' rows are never touched.
 *
 * @module
 */

/**
 * The text form of `pg_snapshot`: every row visible in it is covered. Postgres refuses
 * transaction id 0, so the empty snapshot (nothing covered) is written as 1:1: (transaction
 * ids below 3 are never assigned to a write).
 */
const snapshotText = (s: Snapshot): string =>
  s.xmax === 0n ? "1:1:" : `${s.xmin === 0n ? 1n : s.xmin}:${s.xmax}:${s.xip.join(",")}`

/** The snapshot part of a relay position: rows visible in it are covered whatever the paging. */
const coveredOf = (c: Cursor): Snapshot => (c.kind === "steady" ? c.at : c.from)

/**
 * The envelope of a row of a relay read: `event_time` already ISO-8601 text (see
 * `relayQueries.ts`), headers kept only when they are strings (as every reader does).
 */
const relayedEnvelope = (r: Record<string, unknown>): Envelope => {
  const raw = r.headers
  let headers: Record<string, string> | undefined
  if (typeof raw === "object" && raw !== null && !Array.isArray(raw)) {
    for (const k of Object.keys(raw)) {
      const v = (raw as Record<string, unknown>)[k]
      if (typeof v !== "string") continue
      headers ??= {}
      headers[k] = v
    }
  }
  return {
    id: r.id as string,
    tenant: r.tenant as string,
    channel: r.channel as string,
    type: r.type as string,
    data: (r.data ?? null) as Json,
    headers: headers ?? noHeaders,
    time: r.event_time as string,
  }
}
const noHeaders: Readonly<Record<string, string>> = Object.freeze({})

/** The relay log over the store's pool. */
export const makeRelayLog = (
  executor: SqlExecutor,
  q: RelayQueries,
  partitions: number,
): Omit<RelayLog, "wakeups"> => {
  // A relay's own position is not a user's cursor: it is always read with the current epoch
  // (the snapshot is of this database either way), and one older than retention restarts
  // from the oldest retained row, loudly, instead of failing for ever.
  const position = (text: string, epoch: string): Cursor => {
    const decoded = decodeCursor(text)
    if (decoded instanceof CursorInvalid) {
      const at = /^\d+:\d+:[\d,]*$/.test(text) ? parsePgSnapshot(text) : { xmin: 0n, xmax: 0n, xip: [] }
      return { kind: "steady", epoch, at }
    }
    return { ...decoded, epoch }
  }

  // A relay that is behind checks, at most once a minute, that the outbox's statistics know
  // its size, and refreshes them if not (a bulk load before autovacuum ran): with stale
  // statistics every page would sort the whole backlog instead of reading an index range.
  let statisticsCheckedAt = 0
  const refreshStatistics = Effect.gen(function* () {
    if (Date.now() - statisticsCheckedAt < 60_000) return
    statisticsCheckedAt = Date.now()
    const stale = yield* runQuery(executor, "relay statistics", q.staleStatistics)
    if (stale[0]?.stale !== true) return
    yield* Effect.logInfo("relay: the outbox's statistics are stale (bulk load?); running ANALYZE")
    yield* runQuery(executor, "relay analyze", q.analyze).pipe(
      Effect.catch((e) =>
        Effect.logWarning("relay: ANALYZE failed; relay reads may be slow until autovacuum runs", e),
      ),
    )
  })

  const read = (
    partition: number,
    after: string,
    limit: number,
    address?: Address,
  ): Effect.Effect<RelayPage, BusError> =>
    Effect.gen(function* () {
      const scope: Array<unknown> = []
      if (address !== undefined) {
        const a = yield* checkAddress(address)
        scope.push(a.tenant, a.channel)
      } else scope.push(partition)
      const size = Math.min(maxPageSize, Math.max(1, Math.floor(limit)))
      let cursor = position(after, "")
      const paging = cursor.kind === "paging"
      const base = cursor.kind === "steady" ? cursor.at : cursor.to
      const params: Array<unknown> = [...scope, size + 1, ...readParams(cursor)]
      const sql =
        address === undefined
          ? paging
            ? q.readPartitionPaging
            : q.readPartitionSteady
          : paging
            ? q.readAddressPaging
            : q.readAddressSteady
      const rows = yield* runPrepared(executor, "relay read", sql, params)
      const first = rows[0]
      if (first === undefined) return yield* Effect.die(new Error("outbox meta row is missing"))
      const epoch = compactEpoch(String(first.epoch))
      const now = parsePgSnapshot(String(first.snapshot))
      cursor = { ...cursor, epoch }
      const pruned: Position | undefined =
        first.prune_xid === null || first.prune_xid === undefined
          ? undefined
          : { xid: BigInt(String(first.prune_xid)), seq: BigInt(String(first.prune_seq)) }
      if (isExpired(cursor, pruned)) {
        // Retention removed rows this relay had not forwarded: only possible when the outbox
        // ran without a broker (retention then keeps nothing for the relay). Say so and go on
        // from what is left; those events were delivered by the outbox transport, not the broker.
        yield* Effect.logWarning(
          `relay: partition ${partition}: retention pruned rows past the relay's position; forwarding from the oldest retained row`,
        )
        return yield* read(partition, snapshotText({ xmin: 0n, xmax: 0n, xip: [] }), limit, address)
      }
      const found = rows.filter((r) => r.id !== null && r.id !== undefined)
      const more = found.length > size
      if (more) yield* refreshStatistics
      const page = more ? found.slice(0, size) : found
      const head: Cursor = { kind: "steady", epoch, at: now }
      // Every row's frontier shares its snapshots with the page (a row of the paged delta
      // continues the cursor's own; a later one pages from `base` to `now`): their text is
      // built once per page, and a row adds only its position and the check.
      let inDelta: ((last: Position) => string) | undefined
      let afterBase: ((last: Position) => string) | undefined
      const events: Array<RelayedEvent> = new Array(page.length)
      for (let i = 0; i < page.length; i++) {
        const r = page[i]!
        const last: Position = { xid: BigInt(r.xid as string), seq: BigInt(r.seq as string) }
        // The read position after this row: it covers, of this row's address, exactly the
        // rows forwarded before it, so it is the row's frontier too.
        let frontier: string
        if (!more && i === page.length - 1) frontier = encodeCursor(head)
        else if (Number(r.phase) === 0 && cursor.kind === "paging") {
          inDelta ??= pagingCursors(epoch, cursor.from, cursor.to)
          frontier = inDelta(last)
        } else {
          afterBase ??= pagingCursors(epoch, base, now)
          frontier = afterBase(last)
        }
        events[i] = { event: relayedEnvelope(r), position: encodePosition(epoch, last), frontier }
      }
      const next = more ? events[events.length - 1]!.frontier : encodeCursor(head)
      return { rows: events, next, more }
    })

  const claim = (
    partition: number,
    owner: string,
    leaseMs: number,
  ): Effect.Effect<RelayClaim | undefined, BusError> =>
    Effect.gen(function* () {
      const ms = Math.max(1, Math.floor(leaseMs))
      const rows = yield* runQuery(executor, "relay claim", q.claim, [partition, owner, ms])
      const row = rows[0]
      if (row === undefined) return undefined
      const epoch = compactEpoch(String(row.epoch))
      const stored =
        row.position === null || row.position === undefined ? String(row.covered) : String(row.position)
      const ahead: Record<string, string> = {}
      if (typeof row.ahead === "object" && row.ahead !== null) {
        for (const [k, v] of Object.entries(row.ahead)) if (typeof v === "string") ahead[k] = v
      }
      const state: RelayState = {
        position: encodeCursor(position(stored, epoch)),
        ahead,
        fresh: row.fresh === true,
      }
      const held = (r: ReadonlyArray<Record<string, unknown>>) => r.length > 0
      return {
        partition,
        state,
        commit: (next: RelayState) =>
          runPrepared(executor, "relay commit", q.commit, [
            partition,
            owner,
            next.position,
            snapshotText(coveredOf(position(next.position, epoch))),
            JSON.stringify(next.ahead),
            ms,
          ]).pipe(Effect.map(held)),
        renew: runQuery(executor, "relay renew", q.renew, [partition, owner, ms]).pipe(Effect.map(held)),
      } satisfies RelayClaim
    })

  const log: Omit<RelayLog, "wakeups"> = {
    partitions,
    partitionOf: (address) =>
      checkAddress(address).pipe(Effect.map((a) => relayPartitionOf(a.tenant, a.channel, partitions))),
    heartbeat: (owner, leaseMs) =>
      runQuery(executor, "relay heartbeat", q.heartbeat, [owner, Math.max(1, Math.floor(leaseMs))]).pipe(
        Effect.map((rows) => Number(rows[0]?.live ?? 1)),
      ),
    claim,
    release: (partition, owner) =>
      runQuery(executor, "relay release", q.release, [partition, owner]).pipe(Effect.asVoid),
    heldByOthers: (owner) =>
      runQuery(executor, "relay partitions", q.heldByOthers, [owner]).pipe(
        Effect.map((rows) => rows.map((r) => Number(r.partition))),
      ),
    read,
    pending: (partition, after, from, limit) =>
      Effect.gen(function* () {
        const covered = coveredOf(position(after, ""))
        const n = Math.max(1, Math.floor(limit))
        const rows = yield* runPrepared(executor, "relay pending", q.pending, [
          partition,
          from?.tenant ?? "",
          from?.channel ?? "",
          String(covered.xmax),
          xipParam(covered),
          n + 1,
        ])
        const addresses = rows
          .slice(0, n)
          .map((r) => ({ tenant: String(r.tenant), channel: String(r.channel) }))
        return { addresses, complete: rows.length <= n }
      }),
    backlog: runQuery(executor, "relay backlog", q.backlog).pipe(
      Effect.map((rows) => Number(rows[0]?.n ?? 0)),
    ),
  }
  return log
}
