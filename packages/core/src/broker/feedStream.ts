import { Effect, type Scope, Stream } from "effect"
import type { Address } from "../contracts/outboxStore.js"
import type { SubscribeRequest } from "../contracts/transport.js"
import type { DeliveredEvent } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"
import {
  type FeedCursor,
  type FeedStats,
  nextFeedPage,
  type OpenFeedCursor,
} from "../outboxTransport/feed.js"

/**
 * A broker's subscription side: the transport's `head`, `checkStart` and `subscribe`, and
 * what it attaches with `attachFeedCursor` (its feed cursors and their logs' stats).
 */
export interface BrokerSubscribe {
  readonly head: (address: Address) => Effect.Effect<string, BusError>
  readonly checkStart: (address: Address, from: string) => Effect.Effect<void, BusError>
  readonly subscribe: (request: SubscribeRequest) => Stream.Stream<DeliveredEvent, BusError>
  readonly openCursor: OpenFeedCursor
  readonly stats: () => ReadonlyMap<string, FeedStats>
}

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
