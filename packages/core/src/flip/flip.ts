import { Option } from "effect"
import { addressTag } from "../contracts/cursor.js"
import type { Address, OutboxReader } from "../contracts/outboxStore.js"
import { CursorInvalid } from "../model/errors.js"

/**
 * Cursors across a transport flip (docs/flip.md).
 *
 * The outbox is the source of truth on every transport, so every position can be told in
 * the outbox's terms:
 *
 * - **Outbox → broker.** The relay stores each event's outbox *position* with it on the
 *   broker. A broker given an outbox cursor (`pg1:…`, `mem1:…`) reads its stream from the
 *   beginning and skips exactly the events that cursor covers (`OutboxReader.covers`, a pure
 *   comparison): no gap, no duplicate.
 * - **Broker → outbox.** The relay also stores a *frontier* with each event: an outbox
 *   cursor covering only events that reached the broker at or before it. A broker appends
 *   it to the cursor it hands out, after {@link frontierSeparator}
 *   (`redis1:1732180000123-0~pg1:…`). The outbox transport resumes from that frontier: no
 *   gap; events between the frontier and the broker position come again (a few at most:
 *   the relay's batch in flight; see docs/flip.md).
 * - **Broker → another broker**: the frontier is an outbox cursor, so the second case
 *   applies to it as well.
 *
 * **Addresses.** A frontier is a relay cursor: it is not bound to one address (the relay's
 * positions span them all). Positions are shared by every address of an outbox, so a
 * composite cursor of one channel given to another would resume that other channel from
 * the frontier and silently skip its events in between. A composite cursor therefore
 * names its address ({@link addressTag}) before the frontier,
 * `redis1:…~@<tag>:pg1:…`, and every transport refuses a composite or an outbox cursor of
 * another address with `CursorInvalid { reason: "address" }` ({@link checkCursorAddress}).
 * Composite cursors without the tag (made before it existed) are still accepted,
 * unchecked.
 *
 * @module
 */

/** Separates a transport's own cursor from the outbox frontier it carries. */
export const frontierSeparator = "~"

/** The address tag of a composite cursor, right after the separator: `~@<tag>:<frontier>`. */
const taggedFrontier = /^@([0-9a-f]{8}):/

/**
 * `cursor` with `frontier` appended (unchanged without a frontier). With `address`, the
 * composite names it (`<cursor>~@<tag>:<frontier>`), so the frontier is never taken for
 * another address's position; transports pass the event's address.
 */
export const withFrontier = (cursor: string, frontier: string | undefined, address?: Address): string =>
  frontier === undefined || frontier === ""
    ? cursor
    : address === undefined
      ? `${cursor}${frontierSeparator}${frontier}`
      : `${cursor}${frontierSeparator}@${addressTag(address)}:${frontier}`

/**
 * Splits a cursor into the transport's own part, the outbox frontier it carries, if any,
 * and the address tag of the composite, if it names one (see the module comment).
 */
export const splitCursor = (
  cursor: string,
): {
  readonly base: string
  readonly frontier: string | undefined
  readonly address?: string | undefined
} => {
  const i = cursor.indexOf(frontierSeparator)
  if (i < 0) return { base: cursor, frontier: undefined }
  const rest = cursor.slice(i + 1)
  const tagged = taggedFrontier.exec(rest)
  return tagged === null
    ? { base: cursor.slice(0, i), frontier: rest }
    : { base: cursor.slice(0, i), frontier: rest.slice(tagged[0].length), address: tagged[1]! }
}

/**
 * Outbox cursors of the stores shipped here that name their address right after their
 * prefix (`pg2:<tag>:…`, `mem2:<tag>:…`). Their version-1 forms (`pg1:`, `mem1:`) carry
 * none: they are relay positions and frontiers, or cursors handed out before the tag
 * existed, and are accepted unchecked.
 */
const addressedOutboxCursor = /^(?:pg2|mem2):([0-9a-f]{8}):/

/**
 * The address tag a cursor names, if any: the composite's tag, else that of an addressed
 * outbox cursor (itself, or the frontier it carries). A broker's own cursor format is
 * checked by that broker's parser, not here.
 */
export const cursorAddressOf = (cursor: string): string | undefined => {
  const { base, frontier, address } = splitCursor(cursor)
  if (address !== undefined) return address
  const own = addressedOutboxCursor.exec(base)?.[1]
  if (own !== undefined || frontier === undefined) return own
  return addressedOutboxCursor.exec(frontier)?.[1]
}

/**
 * The refusal of a cursor that belongs to another address than `address`. Stores and
 * transports raise it where a cursor names its address (see the module comment).
 */
export const cursorOfAnotherAddress = (cursor: string, address: Address): CursorInvalid => {
  const shown = cursor.length > 200 ? `${cursor.slice(0, 200)}…` : cursor
  return new CursorInvalid({
    cursor: shown,
    reason: "address",
    message: `cursor ${JSON.stringify(shown.length > 80 ? `${shown.slice(0, 80)}…` : shown)} belongs to another tenant or channel than ${address.tenant}/${address.channel}: positions are shared by every address of the outbox, so resuming from it would skip events; keep one cursor per (tenant, channel) and resume from "beginning" or "now" instead`,
  })
}

/**
 * Refuses a cursor (an outbox cursor, or a composite cursor with its frontier) that names
 * another address than `address`; `undefined` when it names `address` or none (a cursor
 * made before cursors named their address, accepted unchecked). Broker transports call it
 * on a `from` that is not their own cursor before resuming from its outbox position.
 */
export const checkCursorAddress = (cursor: string, address: Address): CursorInvalid | undefined => {
  const tag = cursorAddressOf(cursor)
  return tag === undefined || tag === addressTag(address)
    ? undefined
    : cursorOfAnotherAddress(cursor, address)
}

/**
 * For a transport given a cursor that is not its own: the outbox cursor to go by, if there
 * is one. That is `from` itself when it is a cursor of the outbox in context, or the
 * frontier another broker's cursor carries. `undefined` when neither applies (the cursor
 * is then foreign or malformed, as the transport's own parser says).
 */
export const outboxCursorOf = (
  store: Option.Option<OutboxReader["Service"]>,
  from: string,
): string | undefined => {
  if (Option.isNone(store)) return undefined
  const s = store.value
  if (s.ownsCursor(from)) return from
  const { frontier } = splitCursor(from)
  return frontier !== undefined && s.ownsCursor(frontier) ? frontier : undefined
}

/**
 * A filter for a broker replaying its stream for a subscriber that resumes from outbox
 * cursor `cursor`: keeps an event unless the cursor covers its position. An event without
 * a position (relayed before positions existed) or from another outbox epoch is kept: it
 * may come twice, it is never lost.
 */
export const notCoveredBy =
  (store: OutboxReader["Service"], cursor: string) =>
  (position: string | undefined): boolean =>
    position === undefined || store.covers(cursor, position) !== true

/**
 * The error a broker raises when it is asked to resume from an outbox cursor but its stream
 * no longer holds everything it received (trimmed by a length or age limit): events after
 * the cursor may be gone from the broker, so resuming could leave a gap.
 */
export const flipCursorExpired = (cursor: string, where: string): CursorInvalid =>
  new CursorInvalid({
    cursor,
    reason: "expired",
    message: `cannot resume from outbox cursor ${cursor.length > 80 ? `${cursor.slice(0, 80)}…` : cursor}: ${where} no longer holds every event it received (trimmed), so events after the cursor may be missing there; resume from "beginning" or "now"`,
  })
