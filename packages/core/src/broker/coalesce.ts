import { Deferred, Effect, Exit, type Scope } from "effect"
import { BusClosed, type BusError } from "../errors/BusError.js"

/**
 * Coalesces concurrent requests per key: the callers that ask while a request is queued
 * share it. The request is sent on the next turn of the event loop, after every caller of
 * the current burst asked, so its answer is never older than any caller's call (what a
 * head or a cursor check needs); requests already sent are never joined. A burst of ten
 * thousand subscriptions from "now" on one address thus reads the broker's and the
 * outbox's head once, not ten thousand times (which exhausted the outbox's pool).
 *
 * The requests run in `scope` (the transport's): closing it fails those still waiting with
 * `BusClosed` (`closing` is its message).
 *
 * @example
 * ```ts
 * import { coalesce } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * const program = Effect.scoped(
 *   Effect.gen(function* () {
 *     const head = coalesce(yield* Effect.scope, (key) => Effect.succeed(`${key}:head`), "closing")
 *     return yield* Effect.all([head("a"), head("a")], { concurrency: "unbounded" })
 *   }),
 * )
 * ```
 */
export const coalesce = <A>(
  scope: Scope.Scope,
  run: (key: string) => Effect.Effect<A, BusError>,
  closing: string,
): ((key: string) => Effect.Effect<A, BusError>) => {
  const queued = new Map<string, Deferred.Deferred<A, BusError>>()
  const nextTurn = Effect.callback<void>((resume) => {
    const t = setImmediate(() => resume(Effect.void))
    return Effect.sync(() => clearImmediate(t))
  })
  return (key) =>
    Effect.suspend(() => {
      const waiting = queued.get(key)
      if (waiting !== undefined) return Deferred.await(waiting)
      const deferred = Deferred.makeUnsafe<A, BusError>()
      queued.set(key, deferred)
      const request = nextTurn.pipe(
        Effect.andThen(
          Effect.sync(() => {
            queued.delete(key)
          }),
        ),
        Effect.andThen(Effect.exit(run(key))),
        Effect.flatMap((exit) => Deferred.done(deferred, exit)),
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            if (queued.get(key) === deferred) queued.delete(key)
            Deferred.doneUnsafe(deferred, Exit.fail(new BusClosed({ message: closing })))
          }),
        ),
      )
      return Effect.forkIn(request, scope).pipe(Effect.andThen(Deferred.await(deferred)))
    })
}
