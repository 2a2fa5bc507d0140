import type { NatsConnection, Status } from "@nats-io/transport-node"
import { Deferred, Effect, Exit, type Scope } from "effect"

/**
 * What the transport's readers need to know about the connection: whether it is closed
 * for good, and when it has just reconnected.
 *
 * After a reconnect, a pull the server had registered for the old connection is gone
 * (or, after a server restart, the whole ephemeral consumer is), and a publish that was
 * in flight may never be answered. Waiting for heartbeats or timeouts to notice costs
 * seconds to tens of seconds; on this signal readers start over from their position at
 * once, and an unanswered publish is sent again (the stream drops a repeat by its id).
 *
 * @module
 */
export interface ConnectionWatch {
  /** True once the connection is closed for good (the bus is closing, or the user closed theirs). */
  readonly closed: () => boolean
  /** Completes at the next reconnect after it is called. */
  readonly nextReconnect: Effect.Effect<void>
  /** Reconnects seen so far. */
  readonly reconnects: () => number
}

/** Watches `nc`'s status for the life of the scope. */
export const watchConnection = (nc: NatsConnection): Effect.Effect<ConnectionWatch, never, Scope.Scope> =>
  Effect.gen(function* () {
    let current = Deferred.makeUnsafe<void>()
    let count = 0
    // `stop()` (not `return()`) ends the iterator while a read is pending on it.
    const source = yield* Effect.acquireRelease(
      Effect.sync(() => nc.status() as AsyncIterable<Status> & { stop?: () => void }),
      (s) => Effect.sync(() => s.stop?.()),
    )
    const statuses = source[Symbol.asyncIterator]()
    yield* Effect.gen(function* () {
      for (;;) {
        const next: IteratorResult<Status> = yield* Effect.promise(() => statuses.next())
        if (next.done) return
        if (next.value.type === "reconnect") {
          count++
          const fired = current
          current = Deferred.makeUnsafe<void>()
          Deferred.doneUnsafe(fired, Exit.void)
        }
      }
    }).pipe(Effect.forkScoped)
    return {
      closed: () => nc.isClosed(),
      nextReconnect: Effect.suspend(() => Deferred.await(current)),
      reconnects: () => count,
    }
  })
