import { Duration, Effect, Schedule } from "effect"

/**
 * Exponential backoff with jitter, capped, never giving up: the one retry rhythm the
 * bus uses for reconnects, failed reads and relay sends. Jitter keeps a fleet of
 * processes that lost the same server from reconnecting in lockstep.
 */
export const cappedBackoff = (
  initial: Duration.Input,
  max: Duration.Input,
): Schedule.Schedule<Duration.Duration> =>
  Schedule.exponential(initial, 2).pipe(
    Schedule.modifyDelay(({ duration }) =>
      Effect.succeed(Duration.min(duration, Duration.fromInputUnsafe(max))),
    ),
    Schedule.jittered,
  )

/** The delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`, capped at `max`. */
export const backoffDelay = (attempt: number, initialMs: number, maxMs: number): number =>
  Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1))
