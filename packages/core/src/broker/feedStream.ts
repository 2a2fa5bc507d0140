import { Effect, type Scope, Stream } from "effect"
import type { DeliveredEvent } from "../envelope/Envelope.js"
import type { BusError } from "../errors/BusError.js"
import { type FeedCursor, nextFeedPage } from "../outbox-transport/feed.js"

/**
 * A broker subscription's Effect `Stream`, read from its {@link FeedCursor}: the same path
 * the Promise facade pulls, so a broker has one delivery path. Each chunk is the page itself
 * (the shared log's array, not a copy).
 *
 * @example
 * ```ts
 * import { feedStream, type FeedCursor } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * declare const open: Effect.Effect<FeedCursor, never, never>
 * const events = feedStream(open)
 * ```
 */
export const feedStream = <R>(
  open: Effect.Effect<FeedCursor, BusError, R | Scope.Scope>,
): Stream.Stream<DeliveredEvent, BusError, Exclude<R, Scope.Scope>> =>
  Stream.unwrap(
    Effect.map(open, (cursor) =>
      Stream.fromPull(
        Effect.succeed(
          Effect.map(
            nextFeedPage(cursor),
            (page) => page.events as readonly [DeliveredEvent, ...Array<DeliveredEvent>],
          ),
        ),
      ),
    ),
  )
