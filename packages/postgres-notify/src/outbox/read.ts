import { type BusError, CursorInvalid, type DeliveredEvent } from "@bus/core"
import { type Address, addressTag, checkAddress, type Json, type OutboxPage } from "@bus/core/adapter"
import { Effect } from "effect"
import {
  type Cursor,
  checkCursorAddress,
  decodeCursor,
  emptySnapshot,
  encodeCursor,
  isExpired,
  newestSnapshot,
  type Position,
  pagingCursors,
  parsePgSnapshot,
  readParams,
} from "../cursor.js"
import { runPrepared, runQuery, type SqlExecutor } from "../sql/executor.js"
import type { OutboxQueries } from "./queries.js"

/**
 * Snapshot-safe reads of one address (see `cursor.ts` for why and how).
 *
 * @module
 */

/** Largest page a single read returns, whatever the caller asks for. */
export const maxPageSize = 10_000

/** The outbox epoch as cursors carry it: the uuid's 32 hex digits. */
export const compactEpoch = (uuid: string): string => uuid.replaceAll("-", "").toLowerCase()

const toHeaders = (u: unknown): Record<string, string> => {
  const headers: Record<string, string> = {}
  if (typeof u === "object" && u !== null && !Array.isArray(u)) {
    for (const [k, v] of Object.entries(u)) if (typeof v === "string") headers[k] = v
  }
  return headers
}

const toIso = (u: unknown): string =>
  u instanceof Date ? u.toISOString() : new Date(String(u)).toISOString()

/** A cursor read from `after`: `"beginning"` reads after the empty snapshot and is never stale. */
const startOf = (after: string): Cursor | "beginning" | CursorInvalid =>
  after === "beginning" ? "beginning" : decodeCursor(after)

/** Reads up to `limit` committed events of `address` after `after`. */
export const read = (
  executor: SqlExecutor,
  queries: OutboxQueries,
  address: Address,
  after: string,
  limit: number,
): Effect.Effect<OutboxPage, BusError> =>
  Effect.gen(function* () {
    const { tenant, channel } = yield* checkAddress(address)
    const size = Number.isFinite(limit) ? Math.min(maxPageSize, Math.max(1, Math.floor(limit))) : 1
    const start = startOf(after)
    if (start instanceof CursorInvalid) return yield* start
    // Checked before any statement: a cursor of another address changes nothing.
    const tag = addressTag({ tenant, channel })
    if (start !== "beginning") {
      const refused = checkCursorAddress(after, start, { tenant, channel })
      if (refused !== undefined) return yield* refused
    }
    const cursor: Cursor = start === "beginning" ? { kind: "steady", epoch: "", at: emptySnapshot } : start

    // The phase-1 delta starts after `base`; a paging cursor first finishes its own delta.
    const base = cursor.kind === "steady" ? cursor.at : cursor.to
    const params: Array<unknown> = [tenant, channel, size + 1, ...readParams(cursor)]
    const rows = yield* runPrepared(
      executor,
      "read",
      cursor.kind === "steady" ? queries.reads.steady : queries.reads.paging,
      params,
    )
    const first = rows[0]
    if (first === undefined) return yield* Effect.die(new Error("outbox meta row is missing"))
    const epoch = compactEpoch(String(first.epoch))
    const now = parsePgSnapshot(String(first.snapshot))

    if (start !== "beginning") {
      if (cursor.epoch !== epoch) {
        return yield* new CursorInvalid({
          cursor: after,
          reason: "foreign",
          message:
            "cursor comes from another outbox (another database or schema, or one recreated or restored since); resume from the beginning or the head",
        })
      }
      if (newestSnapshot(cursor).xmax > now.xmax) {
        return yield* new CursorInvalid({
          cursor: after,
          reason: "foreign",
          message:
            "cursor is ahead of this database's transaction history (a restored backup?); resume from the beginning or the head",
        })
      }
      const pruned: Position | undefined =
        first.prune_xid === null || first.prune_xid === undefined
          ? undefined
          : { xid: BigInt(String(first.prune_xid)), seq: BigInt(String(first.prune_seq)) }
      if (isExpired(cursor, pruned)) {
        return yield* new CursorInvalid({
          cursor: after,
          reason: "expired",
          message:
            "cursor is older than the outbox's retention: events after it were pruned; resume from the beginning or the head",
        })
      }
    }

    const found = rows.filter((r) => r.id !== null && r.id !== undefined)
    const more = found.length > size
    const page = more ? found.slice(0, size) : found
    const head = encodeCursor({ kind: "steady", epoch, at: now, address: tag })
    // Every event but the page's last gets a paging cursor; those of one phase share
    // (from, to), so their common text is built once per page (`pagingCursors`).
    let ownDelta: ((last: Position) => string) | undefined
    let newDelta: ((last: Position) => string) | undefined
    const last = page.length - 1
    const events: Array<DeliveredEvent> = page.map((r, i) => {
      let cursorText: string
      if (!more && i === last) cursorText = head
      else {
        const position: Position = { xid: BigInt(String(r.xid)), seq: BigInt(String(r.seq)) }
        if (Number(r.phase) === 0 && cursor.kind === "paging") {
          ownDelta ??= pagingCursors(epoch, cursor.from, cursor.to, tag)
          cursorText = ownDelta(position)
        } else {
          newDelta ??= pagingCursors(epoch, base, now, tag)
          cursorText = newDelta(position)
        }
      }
      return {
        id: String(r.id),
        tenant,
        channel,
        type: String(r.type),
        data: (r.data ?? null) as Json,
        headers: toHeaders(r.headers),
        time: toIso(r.event_time),
        cursor: cursorText,
      }
    })
    const next = more ? events[events.length - 1]!.cursor : head
    return { events, next, more }
  })

/** A cursor for "everything committed so far". */
export const head = (
  executor: SqlExecutor,
  queries: OutboxQueries,
  address: Address,
): Effect.Effect<string, BusError> =>
  Effect.gen(function* () {
    const a = yield* checkAddress(address)
    const rows = yield* runQuery(executor, "head", queries.head)
    const first = rows[0]
    if (first === undefined) return yield* Effect.die(new Error("outbox meta row is missing"))
    return encodeCursor({
      kind: "steady",
      epoch: compactEpoch(String(first.epoch)),
      at: parsePgSnapshot(String(first.snapshot)),
      address: addressTag(a),
    })
  })
