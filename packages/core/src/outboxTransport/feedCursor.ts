import { Effect } from "effect"
import { cappedBackoff } from "../bus/backoff.js"
import type { Address, OutboxPage, OutboxReader } from "../contracts/outboxStore.js"
import { type BusError, CursorInvalid } from "../model/errors.js"

/**
 * The shared feed's own cursor, apart from any client's. The feed starts at the head and
 * only ever moves forward, so the store refusing it means the outbox changed under the
 * feed (`rotateEpoch` after a restore): its position now belongs to a history that is
 * gone. The subscribers attached to the feed hold positions of that history too and are
 * told so once (the refusal); the feed itself starts again at the new head, so those who
 * join later, with no cursor or a cursor of the new epoch, are never refused for the
 * feed's stale position (a client reconnecting after its `reset` would otherwise be
 * refused again, for ever).
 *
 * @module
 */

// Transient failures (a dropped connection, a statement past its deadline) are retried
// with capped backoff for ever; each attempt is bounded by the store, and the caller's
// scope can always end the wait.
const transient = {
  schedule: cappedBackoff("50 millis", "5 seconds"),
  while: (e: BusError) => e.retryable,
}

/** The head of `address`, retrying transient failures (a subscription started during an outage waits for the store). */
export const headWithRetry = (
  store: OutboxReader["Service"],
  address: Address,
): Effect.Effect<string, BusError> => store.head(address).pipe(Effect.retry(transient))

/**
 * Refuses a start cursor the store refuses: one read of one row from it, retrying
 * transient failures. `now` and `beginning` are always accepted.
 */
export const checkStartCursor = (
  store: OutboxReader["Service"],
  address: Address,
  start: string,
): Effect.Effect<void, BusError> =>
  start === "now" || start === "beginning"
    ? Effect.void
    : store.read(address, start, 1).pipe(Effect.retry(transient), Effect.asVoid)

/** One page of the feed after `cursor`: the page, or the refusal of the feed's stale cursor with the head to start again from. */
export type FeedRead =
  | { readonly _tag: "Page"; readonly page: OutboxPage }
  | { readonly _tag: "Reanchored"; readonly refused: CursorInvalid; readonly head: string }

/** Reads the feed's next page; a refused feed cursor is re-anchored at the current head. */
export const readFeed = (
  store: OutboxReader["Service"],
  address: Address,
  cursor: string,
  pageSize: number,
): Effect.Effect<FeedRead, BusError> =>
  store.read(address, cursor, pageSize).pipe(
    Effect.retry(transient),
    Effect.map((page): FeedRead => ({ _tag: "Page", page })),
    Effect.catch((error: BusError) =>
      error instanceof CursorInvalid
        ? headWithRetry(store, address).pipe(
            Effect.map((head): FeedRead => ({ _tag: "Reanchored", refused: error, head })),
          )
        : Effect.fail(error),
    ),
  )
