import { Context, type Effect } from "effect"
import type { Envelope } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"

/**
 * Dead letters: events a consumer group or the relay gave up on, parked in the outbox
 * with why. Needed by consumer groups and by the relay.
 *
 * @module
 */

/**
 * Header a replayed dead letter carries (the replay's time): consumer groups look such an
 * event up in their inbox even when it arrives live, so only the group that gave up on it
 * handles it again.
 */
export const replayedHeader = "bus-replayed-at"

/** A dead-lettered event and why it was parked. */
export interface DeadLetter {
  readonly event: Envelope
  readonly reason: string
  /** `relay` for rows the relay gave up on, otherwise the consumer group that gave up. */
  readonly source: string
  readonly attempts: number
  readonly at: string
}

/**
 * Where events a group or relay gave up on are parked and listed.
 *
 * @example
 * ```ts
 * import { DeadLetterStore } from "@bus/core/adapter"
 *
 * const newest = DeadLetterStore.use((letters) => letters.deadLetters(10))
 * ```
 */
export class DeadLetterStore extends Context.Service<
  DeadLetterStore,
  {
    /**
     * Parks an event a consumer group or relay gave up on. A group's letter also records the
     * event in that group's inbox, in the same write: a replay (which removes both) then
     * finds both or neither, never a letter whose inbox entry lands after the replay.
     */
    readonly deadLetter: (letter: DeadLetter) => Effect.Effect<void, BusError>
    /** Dead-lettered events, newest first. */
    readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<DeadLetter>, BusError>
  }
>()("@bus/core/DeadLetterStore") {}
