import { Effect, Exit, Fiber, Scope, Stream } from "effect"

/** Runs an effect to its value. */
export const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect)

/** Runs an effect that must fail, and returns its error. */
export const failure = <A, E>(effect: Effect.Effect<A, E>): Promise<E> =>
  Effect.runPromise(Effect.flip(effect))

/** Consumes a stream in the background into `items`; `stop()` interrupts it. */
export const collect = <A, E>(stream: Stream.Stream<A, E>) => {
  const items: Array<A> = []
  let ended = false
  const fiber = Effect.runFork(
    Stream.runForEach(stream, (a) =>
      Effect.sync(() => {
        items.push(a)
      }),
    ).pipe(
      Effect.ensuring(
        Effect.sync(() => {
          ended = true
        }),
      ),
    ),
  )
  return {
    items,
    ended: () => ended,
    stop: () => Effect.runPromise(Fiber.interrupt(fiber)),
  }
}

/** A scope the test closes itself, for scoped effects such as `watch`. */
export const openScope = () => {
  const scope = Effect.runSync(Scope.make())
  return {
    use: <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> =>
      Effect.runPromise(Scope.provide(effect, scope)),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void)),
  }
}
