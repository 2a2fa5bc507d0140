import { Effect } from "effect"

/**
 * A bounded async queue bridging the subscription fiber (pushing whole chunks, as the
 * stream emits them) and a pulling `for await` loop. Ends cleanly or with the producer's
 * error.
 *
 * Back-pressure reaches the stream: when `capacity` items wait, {@link EventQueue.offer}
 * does not return until the loop takes some, so the fiber stops pulling and a consumer
 * that never calls `next()` holds at most `capacity` items plus one chunk. Upstream, the
 * subscription then falls behind the shared feed and later resumes from its own cursor,
 * so nothing is lost and nothing piles up.
 */
export class EventQueue<A> {
  /** Chunks waiting; `#offset` items of the first one were taken already. */
  readonly #chunks: Array<ReadonlyArray<A>> = []
  #offset = 0
  #size = 0
  #waiter: ((r: IteratorResult<A>) => void) | undefined
  #failWaiter: ((e: unknown) => void) | undefined
  /** The producer, parked until there is room. */
  #space: (() => void) | undefined
  #ended = false
  #error: { readonly error: unknown } | undefined

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`EventQueue capacity must be at least 1, got ${capacity}`)
  }

  /** Items pushed and not yet taken (at most `capacity` plus one chunk). */
  get size(): number {
    return this.#size
  }

  /** Hands `chunk` over once fewer than `capacity` items wait (at once when the loop is waiting). */
  offer(chunk: ReadonlyArray<A>): Effect.Effect<void> {
    if (this.#ended || chunk.length === 0) return Effect.void
    if (this.#size < this.capacity) {
      this.#push(chunk)
      return Effect.void
    }
    // One-argument callback: no AbortSignal is made per wait.
    return Effect.callback<void>((resume) => {
      this.#space = () => {
        this.#space = undefined
        this.#push(chunk)
        resume(Effect.void)
      }
      return Effect.sync(() => {
        this.#space = undefined
      })
    })
  }

  #push(chunk: ReadonlyArray<A>): void {
    if (this.#ended) return
    let from = 0
    if (this.#waiter) {
      const w = this.#waiter
      this.#waiter = undefined
      this.#failWaiter = undefined
      w({ done: false, value: chunk[0] as A })
      from = 1
    }
    if (from < chunk.length) {
      this.#chunks.push(from === 0 ? chunk : chunk.slice(from))
      this.#size += chunk.length - from
    }
  }

  #take(): A | undefined {
    const first = this.#chunks[0]
    if (first === undefined) return undefined
    const item = first[this.#offset] as A
    this.#offset++
    this.#size--
    if (this.#offset >= first.length) {
      this.#chunks.shift()
      this.#offset = 0
    }
    if (this.#space !== undefined && this.#size < this.capacity) this.#space()
    return item
  }

  end(): void {
    if (this.#ended) return
    this.#ended = true
    this.#space = undefined
    this.#waiter?.({ done: true, value: undefined })
    this.#waiter = undefined
  }

  fail(error: unknown): void {
    if (this.#ended) return
    this.#error = { error }
    this.#ended = true
    this.#space = undefined
    this.#failWaiter?.(error)
    this.#waiter = undefined
    this.#failWaiter = undefined
  }

  iterator(): AsyncIterator<A> {
    return {
      next: () => {
        if (this.#size > 0) return Promise.resolve({ done: false, value: this.#take() as A })
        if (this.#error) return Promise.reject(this.#error.error)
        if (this.#ended) return Promise.resolve({ done: true, value: undefined })
        return new Promise((resolve, reject) => {
          this.#waiter = resolve
          this.#failWaiter = reject
        })
      },
    }
  }
}
