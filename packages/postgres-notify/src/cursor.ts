import { hash } from "node:crypto"
import { CursorInvalid } from "@bus/core"
import { type Address, addressTag, cursorOfAnotherAddress } from "@bus/core/adapter"

/**
 * Snapshot cursors.
 *
 * A position in the outbox cannot be a row number: `seq` is taken at INSERT, and
 * transactions commit in another order, so "everything up to seq 11" may still be
 * missing seq 10 (invariant 3). What a reader has seen is instead described by a
 * Postgres snapshot: a cursor holding snapshot S means "every row whose transaction is
 * visible in S has been delivered". A transaction is invisible in S exactly when its
 * xid is ≥ `xmax(S)` or listed in `xip(S)` (in progress when S was taken), so the next
 * read fetches rows with `xid >= xmax(S) OR xid = ANY(xip(S))` (both index range scans)
 * and the new cursor is the reading statement's own snapshot. A long-running
 * transaction only sits in `xip`; it never holds back rows of others.
 *
 * A read cut short by its `limit` needs a position inside that delta: a *paging* cursor
 * (from, to, last) means "visible in `from`, plus rows visible in `to` but not in `from`
 * up to (xid, seq) = last". Reading from it finishes that delta, then continues past `to`.
 *
 * Encoding (opaque to users, stable for this package version):
 *
 *   pg2:<address>:<epoch>:<snap>:<check>                            steady
 *   pg2:<address>:<epoch>:<snap from>:<snap to>:<xid>.<seq>:<check>  paging
 *   snap = <xmin>.<xmax-xmin>[.<xip-xmin>,…]     all numbers base 36
 *
 * `address` is the address the cursor was read for (`addressTag`, 8 hex digits). A
 * snapshot describes the whole outbox, not one address, so a cursor of one channel read
 * for another would be a valid position there and silently skip that channel's events in
 * between (a browser that stored one Last-Event-ID for two streams, a tenant switch): a
 * read refuses a cursor of another address (`CursorInvalid` reason `address`). The same
 * forms without it, `pg1:<epoch>:…`, are the relay's positions and frontiers (which span
 * addresses) and cursors handed out before the address existed: they are still read,
 * with no address check.
 *
 * `check` is 8 hex digits of a SHA-256 of everything before it: a cursor that was cut,
 * extended or edited (every base-36 edit of a number is another valid number) is refused
 * as malformed instead of resuming somewhere else. It is not a signature.
 *
 * `epoch` is the outbox's identity (32 hex digits): a cursor from another database, a
 * recreated schema or a restored backup (after `rotateEpoch`) is refused as foreign.
 *
 * @module
 */

/** A Postgres snapshot (`pg_snapshot`), with 64-bit transaction ids. */
export interface Snapshot {
  readonly xmin: bigint
  readonly xmax: bigint
  /** Transactions in progress when the snapshot was taken, ascending, each in [xmin, xmax). */
  readonly xip: ReadonlyArray<bigint>
}

/** The snapshot in which nothing is visible: reading after it starts at the oldest retained row. */
export const emptySnapshot: Snapshot = { xmin: 0n, xmax: 0n, xip: [] }

/** A row's place in the read order. */
export interface Position {
  readonly xid: bigint
  readonly seq: bigint
}

/** A decoded cursor. `address`: the address tag a `pg2:` cursor names (none for `pg1:`). */
export type Cursor =
  | {
      readonly kind: "steady"
      readonly epoch: string
      readonly at: Snapshot
      readonly address?: string | undefined
    }
  | {
      readonly kind: "paging"
      readonly epoch: string
      readonly from: Snapshot
      readonly to: Snapshot
      readonly last: Position
      readonly address?: string | undefined
    }

const maxXid = (1n << 64n) - 1n
const maxXip = 100_000

/** True when transaction `xid` is visible (committed before) in snapshot `s`. */
export const isVisible = (xid: bigint, s: Snapshot): boolean =>
  xid < s.xmin || (xid < s.xmax && !s.xip.includes(xid))

/** Parses the text form of `pg_snapshot` (`xmin:xmax:xip,…`, decimal). */
export const parsePgSnapshot = (text: string): Snapshot => {
  const m = /^(\d+):(\d+):([\d,]*)$/.exec(text)
  if (!m) throw new Error(`unexpected pg_snapshot text ${JSON.stringify(text)}`)
  const xip = m[3] === "" ? [] : m[3]!.split(",").map((x) => BigInt(x))
  return { xmin: BigInt(m[1]!), xmax: BigInt(m[2]!), xip }
}

/** The oldest transaction id a reader could still be missing (below it, everything is visible). */
export const horizonOf = (s: Snapshot): bigint => s.xmin

const b36 = (n: bigint): string => n.toString(36)

const encodeSnapshot = (s: Snapshot): string => {
  const head = `${b36(s.xmin)}.${b36(s.xmax - s.xmin)}`
  return s.xip.length === 0 ? head : `${head}.${s.xip.map((x) => b36(x - s.xmin)).join(",")}`
}

// One-shot hash: no Hash object per cursor (a page encodes a cursor per event).
const checkOf = (body: string): string => hash("sha256", body, "hex").slice(0, 8)

/** `pg2:<address>:<epoch>` with an address tag, `pg1:<epoch>` without. */
const prefixOf = (epoch: string, address: string | undefined): string =>
  address === undefined ? `pg1:${epoch}` : `pg2:${address}:${epoch}`

/**
 * Encoder of the paging cursors of one page: every event of a page shares (address,
 * epoch, from, to), so their text (snapshots with their in-progress lists) is built once
 * per page and each event adds only its position and the check.
 */
export const pagingCursors = (
  epoch: string,
  from: Snapshot,
  to: Snapshot,
  address?: string,
): ((last: Position) => string) => {
  const prefix = `${prefixOf(epoch, address)}:${encodeSnapshot(from)}:${encodeSnapshot(to)}:`
  return (last) => {
    const body = `${prefix}${b36(last.xid)}.${b36(last.seq)}`
    return `${body}:${checkOf(body)}`
  }
}

/** Encodes a cursor; see the module comment for the format. */
export const encodeCursor = (cursor: Cursor): string => {
  const body =
    cursor.kind === "steady"
      ? `${prefixOf(cursor.epoch, cursor.address)}:${encodeSnapshot(cursor.at)}`
      : `${prefixOf(cursor.epoch, cursor.address)}:${encodeSnapshot(cursor.from)}:${encodeSnapshot(cursor.to)}:${b36(cursor.last.xid)}.${b36(cursor.last.seq)}`
  return `${body}:${checkOf(body)}`
}

const parseB36 = (text: string): bigint | undefined => {
  if (!/^[0-9a-z]{1,13}$/.test(text)) return undefined
  let n = 0n
  for (const c of text) n = n * 36n + BigInt(Number.parseInt(c, 36))
  return n <= maxXid ? n : undefined
}

const decodeSnapshot = (text: string): Snapshot | undefined => {
  const parts = text.split(".")
  if (parts.length !== 2 && parts.length !== 3) return undefined
  const xmin = parseB36(parts[0]!)
  const span = parseB36(parts[1]!)
  if (xmin === undefined || span === undefined || xmin + span > maxXid) return undefined
  const xmax = xmin + span
  const xip: Array<bigint> = []
  if (parts.length === 3) {
    const deltas = parts[2]!.split(",")
    if (deltas.length > maxXip) return undefined
    for (const d of deltas) {
      const delta = parseB36(d)
      if (delta === undefined) return undefined
      const x = xmin + delta
      // Strictly ascending and inside [xmin, xmax), as Postgres itself keeps them.
      if (x >= xmax || (xip.length > 0 && x <= xip[xip.length - 1]!)) return undefined
      xip.push(x)
    }
  }
  return { xmin, xmax, xip }
}

const invalid = (cursor: string, reason: "malformed" | "expired" | "foreign" | "address", message: string) =>
  new CursorInvalid({ cursor, reason, message })

/**
 * Decodes a cursor string, or says why it is not one of ours. Checks form only, not the
 * epoch nor the address (see {@link checkCursorAddress}).
 */
export const decodeCursor = (text: string): Cursor | CursorInvalid => {
  const shown = text.length > 200 ? `${text.slice(0, 200)}…` : text
  if (typeof text !== "string" || !(text.startsWith("pg1:") || text.startsWith("pg2:"))) {
    if (typeof text === "string" && /^[a-z][a-z0-9-]*\d:/.test(text)) {
      return invalid(
        shown,
        "foreign",
        `cursor ${JSON.stringify(shown)} was made by another store, not the Postgres outbox`,
      )
    }
    return invalid(shown, "malformed", `cursor ${JSON.stringify(shown)} is not a Postgres outbox cursor`)
  }
  // Made only when needed: decoding a good cursor (the relay does, per row) builds no error.
  const malformed = () => invalid(shown, "malformed", `cursor ${JSON.stringify(shown)} is malformed`)
  const cut = text.lastIndexOf(":")
  if (cut < 0 || text.slice(cut + 1) !== checkOf(text.slice(0, cut))) return malformed()
  const parts = text.slice(0, cut).split(":")
  // pg2 names its address before the epoch; the rest is laid out as in pg1.
  let address: string | undefined
  if (parts[0] === "pg2") {
    address = parts.splice(1, 1)[0]
    if (address === undefined || !/^[0-9a-f]{8}$/.test(address)) return malformed()
  }
  const epoch = parts[1]
  if (epoch === undefined || !/^[0-9a-f]{32}$/.test(epoch)) return malformed()
  if (parts.length === 3) {
    const at = decodeSnapshot(parts[2]!)
    return at ? { kind: "steady", epoch, at, address } : malformed()
  }
  if (parts.length === 5) {
    const from = decodeSnapshot(parts[2]!)
    const to = decodeSnapshot(parts[3]!)
    const pos = parts[4]!.split(".")
    const xid = pos.length === 2 ? parseB36(pos[0]!) : undefined
    const seq = pos.length === 2 ? parseB36(pos[1]!) : undefined
    if (!from || !to || xid === undefined || seq === undefined) return malformed()
    // The last delivered row was invisible in `from` and visible in `to`.
    if (isVisible(xid, from) || !isVisible(xid, to) || from.xmax > to.xmax) return malformed()
    return { kind: "paging", epoch, from, to, last: { xid, seq }, address }
  }
  return malformed()
}

/**
 * Refuses a cursor that names another address than `address` (its tag, from
 * `addressTag`); `undefined` when it names this one or none (`pg1:`, accepted unchecked).
 */
export const checkCursorAddress = (
  text: string,
  cursor: Cursor,
  address: Address,
): CursorInvalid | undefined =>
  cursor.address === undefined || cursor.address === addressTag(address)
    ? undefined
    : cursorOfAnotherAddress(text, address)

/** Latest snapshot a cursor refers to: a cursor from "later" than the database is from another history. */
export const newestSnapshot = (cursor: Cursor): Snapshot => (cursor.kind === "steady" ? cursor.at : cursor.to)

const comparePosition = (a: Position, b: Position): number =>
  a.xid < b.xid ? -1 : a.xid > b.xid ? 1 : a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0

/**
 * True when retention may have deleted a row the cursor has not delivered. `pruned` is
 * the highest (xid, seq) ever deleted; every deleted row is at or below it, and prune
 * only deletes rows of transactions older than every running one (below its own
 * snapshot's xmin), so all of them are visible to any later snapshot.
 */
export const isExpired = (cursor: Cursor, pruned: Position | undefined): boolean => {
  if (pruned === undefined) return false
  if (cursor.kind === "steady") return pruned.xid >= cursor.at.xmin
  if (pruned.xid < cursor.from.xmin) return false
  // Paging from an older snapshot: still fine if every deleted row was inside the part
  // of the delta already delivered (visible in `to`, at or before `last`).
  return !(pruned.xid < cursor.to.xmin && comparePosition(pruned, cursor.last) <= 0)
}

/**
 * An event's outbox position as relayed events carry it to a broker:
 * `pg1p:<epoch>:<xid>.<seq>` (base 36). Opaque to everyone but this module.
 */
export const encodePosition = (epoch: string, position: Position): string =>
  `pg1p:${epoch}:${b36(position.xid)}.${b36(position.seq)}`

/** Reads a position back; `undefined` for anything else. */
export const decodePosition = (
  text: string,
): { readonly epoch: string; readonly position: Position } | undefined => {
  const m = /^pg1p:([0-9a-f]{32}):([0-9a-z]{1,13})\.([0-9a-z]{1,13})$/.exec(text)
  if (m === null) return undefined
  const xid = parseB36(m[2]!)
  const seq = parseB36(m[3]!)
  return xid === undefined || seq === undefined ? undefined : { epoch: m[1]!, position: { xid, seq } }
}

/**
 * Whether a reader at `cursor` has delivered the row at `position`: the row is visible in
 * the cursor's snapshot, or (paging) inside the part of the delta it already delivered.
 */
export const coversPosition = (cursor: Cursor, position: Position): boolean =>
  cursor.kind === "steady"
    ? isVisible(position.xid, cursor.at)
    : isVisible(position.xid, cursor.from) ||
      (isVisible(position.xid, cursor.to) && comparePosition(position, cursor.last) <= 0)

/**
 * The part of snapshot `s` below transaction `bound`: visible exactly where `s` sees a
 * transaction and its id is below `bound` (`s` itself when `bound` is past `s.xmax`).
 */
export const snapshotBelow = (s: Snapshot, bound: bigint): Snapshot => {
  if (bound >= s.xmax) return s
  const xmax = bound
  const xmin = s.xmin < bound ? s.xmin : bound
  return { xmin, xmax, xip: s.xip.filter((x) => x >= xmin && x < xmax) }
}

/** A snapshot's in-progress transaction ids as statement parameters. */
export const xipParam = (s: Snapshot): Array<string> => s.xip.map(String)

/**
 * The snapshot parameters of the snapshot-safe read statements, after their scope and limit
 * parameters: the base snapshot's xmax and xip (`to` for a paging cursor), then for a paging
 * cursor `from`'s xmax and xip, `to`'s, and the last delivered (xid, seq). Subscriber reads
 * and the relay's reads take the same list.
 */
export const readParams = (cursor: Cursor): Array<unknown> => {
  const base = cursor.kind === "steady" ? cursor.at : cursor.to
  const params: Array<unknown> = [String(base.xmax), xipParam(base)]
  if (cursor.kind === "paging") {
    params.push(
      String(cursor.from.xmax),
      xipParam(cursor.from),
      String(cursor.to.xmax),
      xipParam(cursor.to),
      String(cursor.last.xid),
      String(cursor.last.seq),
    )
  }
  return params
}
