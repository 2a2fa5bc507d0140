import { CursorInvalid, isOutboxFrontier, splitCursor } from "@bus/core"

/**
 * NATS cursors. A delivered event's cursor is `nats1:<stream sequence>`: the JetStream
 * sequence of its message in the event stream. Resuming from it starts at the next
 * message of the subscription's subject.
 *
 * The cursor `head` hands out for "now" may carry an anchor when the bus has an outbox:
 * `nats1:<sequence>+<ms>+<outbox head>`, the stream's last sequence, the time and the
 * outbox's head cursor when it was taken. A subscription from it leaves out events the
 * outbox committed before that head but the relay had not sent yet (see `subscribe`).
 *
 * A delivered event's cursor may carry the outbox frontier the relay stored with it, after
 * `~` (`nats1:<sequence>~<outbox cursor>`, docs/flip.md). The frontier must be a well-formed
 * outbox cursor (see `isOutboxFrontier`): a cursor with a damaged one is refused as
 * `malformed`, as a damaged sequence is.
 *
 * A cursor names a position in one stream; cursors of other transports (`pg1:`, `mem1:`)
 * are refused as `foreign`.
 *
 * @module
 */

const prefix = "nats1:"
const plain = /^(0|[1-9][0-9]{0,15})$/
const anchored = /^(0|[1-9][0-9]{0,15})\+(0|[1-9][0-9]{0,15})\+(.+)$/s

/** What a cursor says. */
export interface ParsedCursor {
  /** The stream sequence delivered so far: reading resumes after it. */
  readonly seq: number
  /** For a head cursor: when it was taken and the outbox head at that moment. */
  readonly anchor?: { readonly at: number; readonly outboxHead: string }
}

/** The cursor of the message at `seq`. */
export const encodeCursor = (seq: number): string => `${prefix}${seq}`

/** A head cursor anchored to the outbox's head. */
export const encodeHeadCursor = (seq: number, at: number, outboxHead: string): string =>
  `${prefix}${seq}+${at}+${outboxHead}`

const invalid = (cursor: string): CursorInvalid => {
  const foreign = /^[a-z][a-z0-9]*[0-9]:/.test(cursor) && !cursor.startsWith(prefix)
  return new CursorInvalid({
    cursor,
    reason: foreign ? "foreign" : "malformed",
    message: foreign
      ? `cursor ${JSON.stringify(cursor)} comes from another transport; NATS cursors look like nats1:<sequence>`
      : `cursor ${JSON.stringify(cursor)} is not a NATS cursor (nats1:<sequence>)`,
  })
}

/** Reads a cursor back, or says why it cannot be read. */
export const parseCursor = (cursor: string): ParsedCursor | CursorInvalid => {
  if (typeof cursor !== "string" || !cursor.startsWith(prefix)) return invalid(String(cursor))
  // A delivered event's cursor may carry an outbox frontier after "~" (docs/flip.md).
  const { base, frontier } = splitCursor(cursor)
  if (frontier !== undefined && !isOutboxFrontier(frontier)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} carries a damaged outbox frontier after "~" (nats1:<sequence>~<outbox cursor>)`,
    })
  }
  const rest = base.slice(prefix.length)
  const p = plain.exec(rest)
  if (p !== null) return { seq: Number(p[1]) }
  const a = anchored.exec(rest)
  if (a !== null) return { seq: Number(a[1]), anchor: { at: Number(a[2]), outboxHead: a[3]! } }
  return invalid(cursor)
}

/** The stream sequence a cursor points at (its anchor, if any, left out). */
export const decodeCursor = (cursor: string): number | CursorInvalid => {
  const parsed = parseCursor(cursor)
  return parsed instanceof CursorInvalid ? parsed : parsed.seq
}
