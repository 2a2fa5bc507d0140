import { CursorInvalid } from "@bus/core"
import { isOutboxFrontier, splitCursor } from "@bus/core/adapter"

/**
 * NATS cursors. A delivered event's cursor is `nats2:<address>.<stream>.<sequence>`: the
 * address tag of its tenant channel (core `addressTag`, 8 hex digits), the identity of the
 * stream it was read from (8 hex digits derived from the stream's `created` timestamp, see
 * `streamWatch.ts`), and the JetStream sequence of its message. Resuming from it starts at
 * the next message of the subscription's subject.
 *
 * Both tags exist to refuse, instead of misread, a cursor that points elsewhere: a cursor of
 * another tenant or channel (`CursorInvalid` `address`) would otherwise skip the events
 * between the two sequences, and one of a stream that was deleted or lost with the server's
 * store would skip as many events of the new stream as its sequence says. A cursor of a
 * stream that no longer exists resumes by the outbox frontier it carries, or is refused.
 *
 * The cursor `head` hands out for "now" may carry an anchor when the bus has an outbox:
 * `nats2:<address>.<stream>.<sequence>+<ms>+<outbox head>`, the stream's last sequence, the
 * time and the outbox's head cursor when it was taken. A subscription from it leaves out
 * events the outbox committed before that head but the relay had not sent yet (see
 * `subscribe`).
 *
 * A delivered event's cursor may carry the outbox frontier the relay stored with it, after
 * `~` (`nats2:…~<outbox cursor>`, docs/flip.md). The frontier must be a well-formed outbox
 * cursor (see `isOutboxFrontier`): a cursor with a damaged one is refused as `malformed`, as
 * a damaged sequence is.
 *
 * Cursors of version 1 (`nats1:<sequence>`, with the same optional anchor and frontier) are
 * still accepted, but carry neither tag: they are not checked against their address or their
 * stream (docs/nats.md).
 *
 * Cursors of other transports are refused as `foreign`, except outbox cursors (`pg1:`,
 * `mem1:`) and other brokers' cursors carrying an outbox frontier, which resume across a
 * flip (`subscribe.ts`, docs/flip.md).
 *
 * @module
 */

const prefix = "nats2:"
const legacyPrefix = "nats1:"
const plain = /^(0|[1-9][0-9]{0,15})$/
const anchored = /^(0|[1-9][0-9]{0,15})\+(0|[1-9][0-9]{0,15})\+(.+)$/s
const tagged = /^([0-9a-f]{8})\.([0-9a-f]{8})\.(.+)$/s

/** What a cursor says. */
export interface ParsedCursor {
  /** The stream sequence delivered so far: reading resumes after it. */
  readonly seq: number
  /** For a head cursor: when it was taken and the outbox head at that moment. */
  readonly anchor?: { readonly at: number; readonly outboxHead: string }
  /** The address tag (core `addressTag`); undefined for a version-1 cursor. */
  readonly address?: string
  /** The stream identity (`streamIdOf`); undefined for a version-1 cursor. */
  readonly stream?: string
}

/** Where a cursor points: its address tag and stream identity. */
export interface CursorPlace {
  readonly address: string
  readonly stream: string
}

/** The cursor of the message at `seq`. Without `place`, a version-1 cursor (tests, tools). */
export const encodeCursor = (seq: number, place?: CursorPlace): string =>
  place === undefined ? `${legacyPrefix}${seq}` : `${prefix}${place.address}.${place.stream}.${seq}`

/** A head cursor anchored to the outbox's head. */
export const encodeHeadCursor = (place: CursorPlace, seq: number, at: number, outboxHead: string): string =>
  `${prefix}${place.address}.${place.stream}.${seq}+${at}+${outboxHead}`

const invalid = (cursor: string): CursorInvalid => {
  const foreign =
    /^[a-z][a-z0-9]*[0-9]:/.test(cursor) && !cursor.startsWith(prefix) && !cursor.startsWith(legacyPrefix)
  return new CursorInvalid({
    cursor,
    reason: foreign ? "foreign" : "malformed",
    message: foreign
      ? `cursor ${JSON.stringify(cursor)} comes from another transport; NATS cursors look like nats2:<address>.<stream>.<sequence>`
      : `cursor ${JSON.stringify(cursor)} is not a NATS cursor (nats2:<address>.<stream>.<sequence>)`,
  })
}

/** Reads a cursor back, or says why it cannot be read. */
export const parseCursor = (cursor: string): ParsedCursor | CursorInvalid => {
  if (typeof cursor !== "string") return invalid(String(cursor))
  const v2 = cursor.startsWith(prefix)
  if (!v2 && !cursor.startsWith(legacyPrefix)) return invalid(cursor)
  // A delivered event's cursor may carry an outbox frontier after "~" (docs/flip.md).
  const { base, frontier } = splitCursor(cursor)
  if (frontier !== undefined && !isOutboxFrontier(frontier)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} carries a damaged outbox frontier after "~" (nats2:<address>.<stream>.<sequence>~<outbox cursor>)`,
    })
  }
  let rest = base.slice(prefix.length)
  let place: { address: string; stream: string } | undefined
  if (v2) {
    const t = tagged.exec(rest)
    if (t === null) return invalid(cursor)
    place = { address: t[1]!, stream: t[2]! }
    rest = t[3]!
  }
  const p = plain.exec(rest)
  if (p !== null) return { seq: Number(p[1]), ...place }
  const a = anchored.exec(rest)
  if (a !== null) return { seq: Number(a[1]), anchor: { at: Number(a[2]), outboxHead: a[3]! }, ...place }
  return invalid(cursor)
}

/** The stream sequence a cursor points at (its anchor, if any, left out). */
export const decodeCursor = (cursor: string): number | CursorInvalid => {
  const parsed = parseCursor(cursor)
  return parsed instanceof CursorInvalid ? parsed : parsed.seq
}
