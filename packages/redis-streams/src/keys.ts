import { type Address, CursorInvalid, isOutboxFrontier, splitCursor } from "@bus/core"

/**
 * Key layout and cursors of the Redis Streams transport.
 *
 * Every key of a tenant carries the tenant as its Redis Cluster hash tag, so one
 * tenant's streams, dead-letter streams and dedupe keys share a slot and a Lua script may
 * touch several of them at once:
 *
 * - `<prefix>:{<tenant>}:<channel>`: the stream of one tenant channel.
 * - `<prefix>:{<tenant>}:<channel>:dlq`: its dead-letter stream (consumer groups).
 * - `<prefix>:{<tenant>}:<channel>:sent:<event id>`: a dedupe marker of one relayed event.
 * - `<prefix>:dlq-index`: the set of dead-letter streams that ever received a letter
 *   (the one key outside any tenant's slot; written apart from the letters).
 *
 * The core name rule forbids `:`, `{` and `}` in tenants and channels, so a key splits
 * one way only and no channel's key can equal another channel's dead-letter key.
 *
 * @module
 */

/** Default first segment of every key. */
export const defaultKeyPrefix = "bus"

/** Keys of one tenant channel. */
export interface ChannelKeys {
  readonly stream: string
  readonly deadLetter: string
  /** The set listing every dead-letter stream under this prefix. */
  readonly deadLetterIndex: string
  readonly dedupe: (eventId: string) => string
}

/** The set of dead-letter stream keys under `prefix`. */
export const deadLetterIndexKey = (prefix: string): string => `${prefix}:dlq-index`

/** Keys of `address` under `prefix`. */
export const channelKeys = (prefix: string, address: Address): ChannelKeys => {
  const stream = `${prefix}:{${address.tenant}}:${address.channel}`
  return {
    stream,
    deadLetter: `${stream}:dlq`,
    deadLetterIndex: deadLetterIndexKey(prefix),
    dedupe: (eventId) => `${stream}:sent:${eventId}`,
  }
}

/** A Redis stream entry id, `<milliseconds>-<sequence>`, both parts unsigned 64-bit. */
export type StreamId = string

const streamIdPattern = /^(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})$/
const maxU64 = 18446744073709551615n

/** True when `s` is a well-formed, in-range stream entry id. */
export const isStreamId = (s: string): s is StreamId => {
  const m = streamIdPattern.exec(s)
  return m !== null && BigInt(m[1]!) <= maxU64 && BigInt(m[2]!) <= maxU64
}

const compareDecimal = (a: string, b: string): number =>
  a.length !== b.length ? a.length - b.length : a < b ? -1 : a > b ? 1 : 0

/** Orders two stream ids: negative, zero or positive like `Array.prototype.sort` expects. */
export const compareStreamIds = (a: StreamId, b: StreamId): number => {
  const i = a.indexOf("-")
  const j = b.indexOf("-")
  return compareDecimal(a.slice(0, i), b.slice(0, j)) || compareDecimal(a.slice(i + 1), b.slice(j + 1))
}

/** Prefix of every cursor this transport hands out. */
export const cursorPrefix = "redis1:"

/**
 * The cursor of a delivered event: `redis1:<stream entry id>`. Resuming from it reads the
 * entries after that id. Stream ids are the server's clock in milliseconds plus a
 * sequence, so they keep growing even across a Redis restart that lost the stream.
 */
export const toCursor = (id: StreamId): string => `${cursorPrefix}${id}`

/**
 * What a cursor says: the stream entry id to read after and, for the cursor `head`
 * returns ("now"), the anchor that tells events committed before it apart from events
 * committed after it (see `subscribe`).
 */
export interface ParsedCursor {
  readonly id: StreamId
  readonly anchor?: {
    /** Wall-clock ms when the head was taken. */
    readonly startedAt: number
    /** The outbox's head cursor at that moment. */
    readonly outboxHead: string
  }
}

/**
 * The cursor `head` returns when an outbox is at hand: `redis1:<id>+<ms>+<outbox head>`.
 * Only head cursors carry the anchor; delivered events carry plain `redis1:<id>` cursors.
 */
export const toHeadCursor = (id: StreamId, startedAt: number, outboxHead: string): string =>
  `${cursorPrefix}${id}+${startedAt}+${outboxHead}`

const anchored = /^([^+]*)\+(0|[1-9][0-9]{0,15})\+(.+)$/s

/** Reads a cursor back; anything that is not a `redis1:` cursor is refused with `CursorInvalid`. */
export const parseCursor = (cursor: string): ParsedCursor | CursorInvalid => {
  if (typeof cursor !== "string" || !cursor.startsWith(cursorPrefix)) {
    const foreign = typeof cursor === "string" && /^[a-z]+[0-9]+:/.test(cursor)
    return new CursorInvalid({
      cursor: String(cursor),
      reason: foreign ? "foreign" : "malformed",
      message: foreign
        ? `cursor ${JSON.stringify(cursor)} comes from another transport; the redis-streams transport resumes only from its own "redis1:" cursors`
        : `cursor ${JSON.stringify(cursor)} is not a redis-streams cursor ("redis1:<ms>-<seq>")`,
    })
  }
  // A delivered event's cursor may carry an outbox frontier (`~…`, docs/flip.md): not ours
  // to resume from, but a damaged one makes the cursor malformed.
  const { base, frontier } = splitCursor(cursor)
  if (frontier !== undefined && !isOutboxFrontier(frontier)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} carries a damaged outbox frontier after "~" ("redis1:<ms>-<seq>~<outbox cursor>")`,
    })
  }
  const rest = base.slice(cursorPrefix.length)
  const m = anchored.exec(rest)
  const id = m ? m[1]! : rest
  if (!isStreamId(id)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} does not hold a stream entry id ("redis1:<ms>-<seq>")`,
    })
  }
  return m ? { id, anchor: { startedAt: Number(m[2]), outboxHead: m[3]! } } : { id }
}
