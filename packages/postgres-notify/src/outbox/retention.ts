import type { BusError } from "@bus/core"
import { Effect, type Scope } from "effect"

/**
 * The retention job: an optional fiber of the store that prunes old outbox rows on a
 * schedule. Several processes may run it against one outbox; their statements skip
 * each other's locked rows, so they share the work instead of waiting.
 *
 * @module
 */

/** Options of the retention job. */
export interface RetentionOptions {
  /** Rows whose event time is older than this are deleted (default 7 days). */
  readonly maxAgeMs?: number
  /** How often the job runs (default 1 hour); the first run comes after a random part of it. */
  readonly intervalMs?: number
  /**
   * Keep rows a relay has not forwarded yet (parked rows count as done). Default: true when
   * the store wakes relays (`notify` is `relay` or `both`), false otherwise; a
   * postgres-notify-only deployment has no relay, so its rows are never "forwarded".
   */
  readonly keepUnforwarded?: boolean
}

/** What the job has done so far. */
export interface RetentionStatus {
  readonly enabled: boolean
  readonly maxAgeMs: number
  readonly intervalMs: number
  readonly keepUnforwarded: boolean
  readonly runs: number
  /** Rows deleted since start. */
  readonly deleted: number
  readonly lastRunAt: string | undefined
  readonly lastError: string | undefined
}

/** Default age after which the retention job deletes outbox rows: 7 days. */
export const defaultRetentionMaxAgeMs = 7 * 24 * 60 * 60 * 1000
/** Default interval between retention runs: 1 hour. */
export const defaultRetentionIntervalMs = 60 * 60 * 1000

/** Starts the job in the current scope (or only reports it disabled). */
export const makeRetentionJob = (config: {
  readonly options: RetentionOptions | undefined
  readonly defaultKeepUnforwarded: boolean
  readonly prune: (
    olderThanMs: number,
    options: { readonly keepUnforwarded: boolean },
  ) => Effect.Effect<number, BusError>
}): Effect.Effect<() => RetentionStatus, never, Scope.Scope> =>
  Effect.gen(function* () {
    const o = config.options
    let status: RetentionStatus = {
      enabled: o !== undefined,
      maxAgeMs: Math.max(0, o?.maxAgeMs ?? defaultRetentionMaxAgeMs),
      intervalMs: Math.max(1, o?.intervalMs ?? defaultRetentionIntervalMs),
      keepUnforwarded: o?.keepUnforwarded ?? config.defaultKeepUnforwarded,
      runs: 0,
      deleted: 0,
      lastRunAt: undefined,
      lastError: undefined,
    }
    if (o !== undefined) {
      const once = config.prune(status.maxAgeMs, { keepUnforwarded: status.keepUnforwarded }).pipe(
        Effect.matchEffect({
          onFailure: (e) =>
            Effect.sync(() => {
              status = {
                ...status,
                runs: status.runs + 1,
                lastRunAt: new Date().toISOString(),
                lastError: e.message,
              }
            }).pipe(
              Effect.andThen(Effect.logWarning(`@bus/postgres-notify: retention prune failed: ${e.message}`)),
            ),
          onSuccess: (n) =>
            Effect.sync(() => {
              status = {
                ...status,
                runs: status.runs + 1,
                deleted: status.deleted + n,
                lastRunAt: new Date().toISOString(),
                lastError: undefined,
              }
            }),
        }),
      )
      // A fleet started together spreads its first runs over the interval.
      const first = Math.floor(Math.random() * status.intervalMs)
      yield* Effect.sleep(first).pipe(
        Effect.andThen(once.pipe(Effect.andThen(Effect.sleep(status.intervalMs)), Effect.forever)),
        Effect.forkScoped,
      )
    }
    return () => status
  })
