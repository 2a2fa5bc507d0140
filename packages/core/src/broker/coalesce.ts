import { Deferred, Effect, Exit, type Scope } from "effect"
import { BusClosed, type BusError } from "../model/errors.js"

/**
 * Coalesces concurrent requests per key: the callers that ask while a request is queued
 * share it. A burst of ten thousand subscriptions from "now" on one address thus reads a
 * head once, not ten thousand times (which exhausted the outbox's pool).
 *
 * By default (`"nextTurn"`) the request is sent on the next turn of the event loop, after
 * every caller of the current burst asked, so its answer is never older than any caller's
 * call; requests already sent are never joined. With `"inFlight"` the first caller's request
 * starts at once, in its call, and the callers that ask until it answers join it: the answer
 * may be older than a joiner's call, never newer than the first caller's (what an anchored
 * outbox head needs: an older head delivers more, never less).
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
  mode: "nextTurn" | "inFlight" = "nextTurn",
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
      const leave = Effect.sync(() => {
        if (queued.get(key) === deferred) queued.delete(key)
      })
      const request = (mode === "nextTurn" ? Effect.andThen(nextTurn, leave) : Effect.void).pipe(
        Effect.andThen(Effect.exit(run(key))),
        Effect.tap(() => (mode === "inFlight" ? leave : Effect.void)),
        Effect.flatMap((exit) => Deferred.done(deferred, exit)),
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            if (queued.get(key) === deferred) queued.delete(key)
            Deferred.doneUnsafe(deferred, Exit.fail(new BusClosed({ message: closing })))
          }),
        ),
      )
      return Effect.forkIn(request, scope, { startImmediately: mode === "inFlight" }).pipe(
        Effect.andThen(Deferred.await(deferred)),
      )
    })
}
