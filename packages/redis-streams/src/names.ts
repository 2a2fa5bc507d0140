import { randomUUID } from "node:crypto"
import { CursorInvalid } from "@bus/core"
import { type Address, isOutboxFrontier, splitCursor } from "@bus/core/adapter"

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
 * - `<prefix>:{<tenant>}:<channel>:identity`: the stream's identity (see `identityKey`).
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
  /** The stream's identity (see {@link identityKey}). */
  readonly identity: string
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
    identity: identityKey(stream),
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

/** Prefix of the cursors this transport hands out (version 2: bound to address and stream identity). */
export const cursorPrefix = "redis2:"

/** Prefix of the cursors of earlier versions, still accepted (their address and stream are not checked). */
export const legacyCursorPrefix = "redis1:"

/**
 * Where a cursor points: the address it belongs to (`addressTag` of core, 8 hex digits) and
 * the identity of the stream it was read from (see {@link identityKey}).
 */
export interface CursorBinding {
  readonly tag: string
  readonly identity: string
}

/**
 * The key holding a stream's identity: a random token set the first time a reader meets
 * the stream (with `SET NX`), in the stream's own hash slot. It dies with the stream's
 * data (a restart without persistence, FLUSHALL, FLUSHDB), and whoever comes next sets a
 * new one, so a reader that remembers the old token knows the stream it read is gone,
 * even when the relay has already re-created a stream of the same name. Cursors carry it,
 * as outbox cursors carry their epoch.
 */
export const identityKey = (stream: string): string => `${stream}:identity`

/** A fresh stream identity: 12 random hex digits. */
export const newIdentity = (): string => randomUUID().replaceAll("-", "").slice(0, 12)

/**
 * The cursor of a delivered event: `redis2:<address tag>.<stream identity>:<stream entry id>`.
 * Resuming from it reads the entries after that id, if the cursor belongs to the address
 * and the stream still has that identity. Stream ids are the server's clock in
 * milliseconds plus a sequence, so they keep growing even across a Redis restart that
 * lost the stream.
 */
export const toCursor = (id: StreamId, binding: CursorBinding): string =>
  `${cursorPrefix}${binding.tag}.${binding.identity}:${id}`

/**
 * What a cursor says: the stream entry id to read after, what it is bound to (absent for a
 * legacy `redis1:` cursor, accepted unchecked) and, for the cursor `head` returns ("now"),
 * the anchor that tells events committed before it apart from events committed after it
 * (see `subscribe`).
 */
export interface ParsedCursor {
  readonly id: StreamId
  readonly binding?: CursorBinding
  /** The outbox frontier the cursor carries after `~` (events relayed with their position). */
  readonly frontier?: string
  readonly anchor?: {
    /** Wall-clock ms when the head was taken. */
    readonly startedAt: number
    /** The outbox's head cursor at that moment. */
    readonly outboxHead: string
  }
}

/**
 * The cursor `head` returns when an outbox is at hand: `redis2:<tag>.<identity>:<id>+<ms>+<outbox head>`.
 * Only head cursors carry the anchor.
 */
export const toHeadCursor = (
  id: StreamId,
  binding: CursorBinding,
  startedAt: number,
  outboxHead: string,
): string => `${toCursor(id, binding)}+${startedAt}+${outboxHead}`

const anchored = /^([^+]*)\+(0|[1-9][0-9]{0,15})\+(.+)$/s
const bound = /^([0-9a-f]{8})\.([0-9a-f]{12}):(.*)$/s

/**
 * Reads a cursor back; anything that is not a `redis2:` (or legacy `redis1:`) cursor is
 * refused with `CursorInvalid`. Whether the cursor belongs to the address and to the
 * stream as it is now is checked by the subscription (`checkStart`).
 */
export const parseCursor = (cursor: string): ParsedCursor | CursorInvalid => {
  const legacy = typeof cursor === "string" && cursor.startsWith(legacyCursorPrefix)
  if (typeof cursor !== "string" || !(legacy || cursor.startsWith(cursorPrefix))) {
    const foreign = typeof cursor === "string" && /^[a-z]+[0-9]+:/.test(cursor)
    return new CursorInvalid({
      cursor: String(cursor),
      reason: foreign ? "foreign" : "malformed",
      message: foreign
        ? `cursor ${JSON.stringify(cursor)} comes from another transport; the redis-streams transport resumes only from its own "redis2:" (or older "redis1:") cursors`
        : `cursor ${JSON.stringify(cursor)} is not a redis-streams cursor ("redis2:<tag>.<identity>:<ms>-<seq>")`,
    })
  }
  // A delivered event's cursor may carry an outbox frontier (`~…`, docs/flip.md): used to
  // recover after Redis lost the stream, but a damaged one makes the cursor malformed.
  const { base, frontier } = splitCursor(cursor)
  if (frontier !== undefined && !isOutboxFrontier(frontier)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} carries a damaged outbox frontier after "~" ("redis2:<tag>.<identity>:<ms>-<seq>~<outbox cursor>")`,
    })
  }
  let rest = base.slice(legacy ? legacyCursorPrefix.length : cursorPrefix.length)
  let binding: CursorBinding | undefined
  if (!legacy) {
    const b = bound.exec(rest)
    if (b === null) {
      return new CursorInvalid({
        cursor,
        reason: "malformed",
        message: `cursor ${JSON.stringify(cursor)} does not name its address and stream ("redis2:<tag>.<identity>:<ms>-<seq>")`,
      })
    }
    binding = { tag: b[1]!, identity: b[2]! }
    rest = b[3]!
  }
  const m = anchored.exec(rest)
  const id = m ? m[1]! : rest
  if (!isStreamId(id)) {
    return new CursorInvalid({
      cursor,
      reason: "malformed",
      message: `cursor ${JSON.stringify(cursor)} does not hold a stream entry id ("redis2:<tag>.<identity>:<ms>-<seq>")`,
    })
  }
  return {
    id,
    ...(binding === undefined ? {} : { binding }),
    ...(frontier === undefined ? {} : { frontier }),
    ...(m ? { anchor: { startedAt: Number(m[2]), outboxHead: m[3]! } } : {}),
  }
}
