/**
 * An unbounded async queue bridging a pushing producer (the subscription fiber) and a
 * pulling `for await` loop. Ends cleanly or with the producer's error.
 */
export class EventQueue<A> {
  readonly #items: Array<A> = []
  #waiter: ((r: IteratorResult<A>) => void) | undefined
  #failWaiter: ((e: unknown) => void) | undefined
  #ended = false
  #error: { readonly error: unknown } | undefined

  push(item: A): void {
    if (this.#ended) return
    if (this.#waiter) {
      const w = this.#waiter
      this.#waiter = undefined
      this.#failWaiter = undefined
      w({ done: false, value: item })
    } else this.#items.push(item)
  }

  end(): void {
    if (this.#ended) return
    this.#ended = true
    this.#waiter?.({ done: true, value: undefined })
    this.#waiter = undefined
  }

  fail(error: unknown): void {
    if (this.#ended) return
    this.#error = { error }
    this.#ended = true
    this.#failWaiter?.(error)
    this.#waiter = undefined
    this.#failWaiter = undefined
  }

  iterator(): AsyncIterator<A> {
    return {
      next: () => {
        const item = this.#items.shift()
        if (item !== undefined) return Promise.resolve({ done: false, value: item })
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
