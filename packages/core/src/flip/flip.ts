import { Option } from "effect"
import type { OutboxStore } from "../contracts/OutboxStore.js"
import { CursorInvalid } from "../errors/BusError.js"

/**
 * Cursors across a transport flip (docs/flip.md).
 *
 * The outbox is the source of truth on every transport, so every position can be told in
 * the outbox's terms:
 *
 * - **Outbox → broker.** The relay stores each event's outbox *position* with it on the
 *   broker. A broker given an outbox cursor (`pg1:…`, `mem1:…`) reads its stream from the
 *   beginning and skips exactly the events that cursor covers (`OutboxStore.covers`, a pure
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
 * @module
 */

/** Separates a transport's own cursor from the outbox frontier it carries. */
export const frontierSeparator = "~"

/** `cursor` with `frontier` appended (unchanged without a frontier). */
export const withFrontier = (cursor: string, frontier: string | undefined): string =>
  frontier === undefined || frontier === "" ? cursor : `${cursor}${frontierSeparator}${frontier}`

/** Splits a cursor into the transport's own part and the outbox frontier it carries, if any. */
export const splitCursor = (
  cursor: string,
): { readonly base: string; readonly frontier: string | undefined } => {
  const i = cursor.indexOf(frontierSeparator)
  return i < 0
    ? { base: cursor, frontier: undefined }
    : { base: cursor.slice(0, i), frontier: cursor.slice(i + 1) }
}

/**
 * For a transport given a cursor that is not its own: the outbox cursor to go by, if there
 * is one. That is `from` itself when it is a cursor of the outbox in context, or the
 * frontier another broker's cursor carries. `undefined` when neither applies (the cursor
 * is then foreign or malformed, as the transport's own parser says).
 */
export const outboxCursorOf = (
  store: Option.Option<OutboxStore["Service"]>,
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
  (store: OutboxStore["Service"], cursor: string) =>
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
