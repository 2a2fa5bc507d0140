import { Stream } from "effect"
import type { DeliveredEvent } from "../model/envelope.js"

/** How many recent event ids a subscription remembers to drop repeats. */
export const defaultDedupeWindow = 10_000

/**
 * Drops events whose id was already seen by this stream. The window is bounded (oldest
 * ids forgotten first): repeats come from overlapping catch-up and live reads or broker
 * redeliveries, which are close together, so a bounded memory is enough.
 */
export const dedupeById =
  (window: number = defaultDedupeWindow) =>
  <E, R>(self: Stream.Stream<DeliveredEvent, E, R>): Stream.Stream<DeliveredEvent, E, R> =>
    Stream.suspend(() => {
      const seen = new Set<string>()
      return Stream.filter(self, (event) => {
        if (seen.has(event.id)) return false
        seen.add(event.id)
        // Sets iterate in insertion order, so the first key is the oldest.
        if (seen.size > window) seen.delete(seen.values().next().value as string)
        return true
      })
    })
