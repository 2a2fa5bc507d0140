import { type Duration, Effect, type Schedule } from "effect"
import { cappedBackoff } from "../bus/backoff.js"
import type { BusError } from "../model/errors.js"

/**
 * The one retry rhythm of the brokers: every call to a broker or to the outbox that may fail
 * for a moment (a dropped connection, an election, a failover, a statement past its deadline)
 * is retried with {@link cappedBackoff}, jittered, so that a fleet of processes that lost the
 * same server does not come back in lockstep. Before this, NATS and Redis Streams had five
 * loops of their own (three without jitter); each is now {@link retryWhileRetryable} with its
 * bounds, or a loop that calls it once per turn so that its count of failures starts again
 * after any success.
 *
 * @module
 */

/** Bounds of {@link retryWhileRetryable}. */
export interface RetryOptions {
  /** First delay (default 50 ms). */
  readonly initial?: Duration.Input
  /** Longest delay (default 5 s). */
  readonly max?: Duration.Input
  /**
   * Gives up early (the last error is returned) when this says so: a closed connection, a
   * spent time budget. Checked after each failure, before the wait.
   */
  readonly giveUp?: (error: BusError) => boolean
}

/** The brokers' retry schedule: {@link cappedBackoff} from `initial` to `max` (50 ms to 5 s by default). */
export const brokerRetry = (options: RetryOptions = {}): Schedule.Schedule<Duration.Duration> =>
  cappedBackoff(options.initial ?? "50 millis", options.max ?? "5 seconds")

/**
 * Retries `effect` with {@link brokerRetry} for as long as its error is retryable (and
 * `giveUp` does not say stop): for ever otherwise, every attempt being bounded by the call
 * itself and the caller's scope able to end the wait. Quiet for a blip (debug), loud when it
 * lasts: a warning at the 5th failure (about one second) and every 30th after that.
 *
 * @example
 * ```ts
 * import { retryWhileRetryable } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * const head = retryWhileRetryable(Effect.succeed("0-0"), "redis-streams: reading the stream position")
 * ```
 */
export const retryWhileRetryable = <A, R>(
  effect: Effect.Effect<A, BusError, R>,
  what: string,
  options: RetryOptions = {},
): Effect.Effect<A, BusError, R> =>
  Effect.suspend(() => {
    let failures = 0
    const { giveUp } = options
    return effect.pipe(
      Effect.tapError((e) => {
        if (!e.retryable || giveUp?.(e) === true) return Effect.void
        failures++
        return failures === 5 || failures % 30 === 0
          ? Effect.logWarning(`${what} keeps failing (${failures} attempts), retrying: ${e.message}`)
          : Effect.logDebug(`${what} failed, retrying: ${e.message}`)
      }),
      Effect.retry({
        schedule: brokerRetry(options),
        while: (e) => e.retryable && giveUp?.(e) !== true,
      }),
    )
  })
