import type { Bus, DeliveredEvent } from "@bus/core"
import type { SubscribeOptions } from "@bus/core/adapter"

/**
 * Where the SSE helpers get events from: a `Bus` from `createBus`, or any function with
 * the shape of `bus.subscribe` (a wrapper, a test double, an Effect program adapted to
 * an async iterable).
 *
 * @module
 */

/** The part of a subscription the SSE helpers use; `Subscription` of `@bus/core` is one. */
export interface SseSubscription extends AsyncIterable<DeliveredEvent> {
  /** Stops delivery and releases what the subscription holds. */
  close(): Promise<void> | void
}

/** A function shaped like `bus.subscribe`. */
export type SubscribeFn = (options: SubscribeOptions) => SseSubscription

/** A bus, or a subscribe function. */
export type SseSource = Bus | SubscribeFn

/** Finds where "now" is on one channel, as a concrete cursor. */
export type HeadFn = (address: { readonly tenant: string; readonly channel: string }) => Promise<string>

/** The subscribe function of a source. */
export const subscribeOf = (source: SseSource): SubscribeFn =>
  typeof source === "function" ? source : (options) => source.subscribe(options)

/**
 * How to turn `"now"` into a cursor for this source. An explicit `head` option wins;
 * a bus answers with `bus.head`, which every transport implements. A bare subscribe
 * function has no answer.
 */
export const headOf = (source: SseSource, explicit: HeadFn | undefined): HeadFn | undefined => {
  if (explicit) return explicit
  if (typeof source === "function") return undefined
  return (address) => source.head(address)
}
