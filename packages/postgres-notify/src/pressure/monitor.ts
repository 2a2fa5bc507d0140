import type { BusError } from "@bus/core"
import { defaultNotifyRateThreshold } from "@bus/core/adapter"
import { Effect, Metric, type Scope } from "effect"
import { runQuery, type SqlExecutor } from "../sql/executor.js"

/**
 * The NOTIFY-pressure monitor. Every committing transaction that issued NOTIFY takes one
 * cluster-wide lock at commit (`LockSharedObject` on the `pg_database` class, object 0,
 * in `PreCommit_Notify`), so notifying commits are serialised: past a machine-dependent
 * rate they queue on it and every write that notifies slows down. The monitor samples:
 *
 * - notifying commits/s from this process (appends that sent NOTIFY inside the caller's
 *   transaction, plus the batched and wake-up NOTIFYs this process sent itself);
 * - commits/s of the whole database (`pg_stat_database.xact_commit` over the last 15 s),
 *   as context (the statistics system reports it late: up to 1 s, 10 s for idle sessions);
 * - backends waiting on NOTIFY's commit lock (`pg_locks`: `object` lock on `pg_database`
 *   object 0, not granted; shown as `Lock` / `object` in `pg_stat_activity`) and on the
 *   notify queue's LWLocks (`NotifyQueue`, `NotifyQueueTail`, `NotifySLRU`,
 *   `NotifyBuffer`; `AsyncQueueLock` / `AsyncCtlLock` before Postgres 13);
 * - `pg_notification_queue_usage()`: the fraction of the 8 GB notification queue in use
 *   (it fills when a listener stops reading, and NOTIFY fails when it is full).
 *
 * Each sample updates Effect metrics (gauges) and a snapshot readable from the store,
 * and logs a warning naming the configuration flip when the rate nears the threshold.
 *
 * @module
 */

/** Options of the monitor. */
export interface PressureOptions {
  /** Sampling interval (default 5 000 ms). Only this one statement runs per interval. */
  readonly intervalMs?: number
  /**
   * Notifying commits/s at which the bus should leave NOTIFY for a broker; the same value
   * as the bus's `notifyRateThreshold` (default: `BUS_NOTIFY_RATE_THRESHOLD`, else the
   * core default).
   */
  readonly notifyRateThreshold?: number
  /** Fraction of the threshold at which to warn (default 0.8). */
  readonly warnAt?: number
  /** Shortest time between two repeated warnings while the rate stays high (default 60 000 ms). */
  readonly warnEveryMs?: number
}

/** One reading of the monitor. */
export interface PressureSnapshot {
  /** Notifying commits per second sent by this process over the last sample. */
  readonly notifyingCommitsPerSecond: number
  /** Notifying commits this process sent since start. */
  readonly notifyingCommits: number
  /** Commits per second of the whole database (all transactions, notifying or not), over the last sample. */
  readonly databaseCommitsPerSecond: number
  /** Backends waiting right now for NOTIFY's commit-time lock. */
  readonly notifyCommitLockWaits: number
  /** Backends waiting right now on the notify queue's LWLocks. */
  readonly notifyQueueWaits: number
  /** `pg_notification_queue_usage()`: 0 (empty) to 1 (full). */
  readonly notificationQueueUsage: number
  /** The threshold the rate is compared with, and the rate as a fraction of it. */
  readonly notifyRateThreshold: number
  readonly thresholdRatio: number
  /** `ok`, or `near-threshold` at ≥ `warnAt` of it, or `over-threshold`. */
  readonly level: "ok" | "near-threshold" | "over-threshold"
  /** The last warning logged (cleared when the rate falls back). */
  readonly warning: string | undefined
  /** Samples taken; time of the last one (ISO); the last sampling error. */
  readonly samples: number
  readonly sampledAt: string | undefined
  readonly lastError: string | undefined
}

/** Gauges, all with a `schema` attribute. */
export const pressureMetrics = {
  notifyingCommitsPerSecond: Metric.gauge("bus_pg_notifying_commits_per_second", {
    description: "notifying commits per second sent by this process",
  }),
  databaseCommitsPerSecond: Metric.gauge("bus_pg_database_commits_per_second", {
    description: "commits per second of the database (pg_stat_database.xact_commit)",
  }),
  notifyCommitLockWaits: Metric.gauge("bus_pg_notify_commit_lock_waits", {
    description: "backends waiting for NOTIFY's commit-time lock",
  }),
  notifyQueueWaits: Metric.gauge("bus_pg_notify_queue_lock_waits", {
    description: "backends waiting on the notify queue LWLocks",
  }),
  notificationQueueUsage: Metric.gauge("bus_pg_notification_queue_usage", {
    description: "pg_notification_queue_usage(), 0 to 1",
  }),
  thresholdRatio: Metric.gauge("bus_pg_notify_threshold_ratio", {
    description: "notifying commits per second over notifyRateThreshold",
  }),
}

/** One statement: everything the monitor reads, in one round trip. */
export const pressureSql = `
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::text AS xact_commit,
       pg_notification_queue_usage()::float8 AS queue_usage,
       (SELECT count(*) FROM pg_locks
         WHERE locktype = 'object' AND NOT granted AND classid = 'pg_database'::regclass AND objid = 0)::int AS commit_lock_waits,
       (SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'LWLock'
           AND wait_event IN ('NotifyQueue', 'NotifyQueueTail', 'NotifySLRU', 'NotifyBuffer', 'AsyncQueueLock', 'AsyncCtlLock'))::int AS queue_waits`

/** The monitor's handle inside the store. */
export interface PressureMonitor {
  /** Counts one notifying commit (or NOTIFY statement) of this process. */
  readonly count: (n?: number) => void
  /** The latest snapshot. */
  readonly snapshot: () => PressureSnapshot
  /** Takes a sample now (the scheduled loop calls it every interval). */
  readonly sample: Effect.Effect<PressureSnapshot, BusError>
}

const envThreshold = (): number | undefined => {
  const raw = typeof process === "undefined" ? undefined : process.env.BUS_NOTIFY_RATE_THRESHOLD
  const n = raw === undefined || raw.trim() === "" ? Number.NaN : Number(raw)
  return Number.isFinite(n) && n > 0 ? n : undefined
}

const round = (n: number, digits = 1): number => {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

/**
 * Starts the monitor in the current scope. With `intervalMs: 0` nothing is scheduled and
 * only the local counter runs (`sample` still works on demand).
 */
export const makePressureMonitor = (config: {
  readonly executor: SqlExecutor
  readonly schema: string
  readonly options: PressureOptions
}): Effect.Effect<PressureMonitor, never, Scope.Scope> =>
  Effect.gen(function* () {
    const intervalMs = Math.max(0, config.options.intervalMs ?? 5_000)
    const threshold = config.options.notifyRateThreshold ?? envThreshold() ?? defaultNotifyRateThreshold
    const warnAt = config.options.warnAt ?? 0.8
    const warnEveryMs = config.options.warnEveryMs ?? 60_000
    const attrs = { schema: config.schema }
    let count = 0
    let last: { at: number; count: number } | undefined
    // xact_commit moves in bursts (backends flush statistics at most once a second, idle
    // ones after 10 s), so the database rate is taken over the samples of the last 15 s.
    const history: Array<{ readonly at: number; readonly xactCommit: bigint }> = []
    let lastWarnAt = 0
    let current: PressureSnapshot = {
      notifyingCommitsPerSecond: 0,
      notifyingCommits: 0,
      databaseCommitsPerSecond: 0,
      notifyCommitLockWaits: 0,
      notifyQueueWaits: 0,
      notificationQueueUsage: 0,
      notifyRateThreshold: threshold,
      thresholdRatio: 0,
      level: "ok",
      warning: undefined,
      samples: 0,
      sampledAt: undefined,
      lastError: undefined,
    }

    const sample: Effect.Effect<PressureSnapshot, BusError> = Effect.gen(function* () {
      const rows = yield* runQuery(config.executor, "pressure sample", pressureSql).pipe(
        Effect.tapError((e) =>
          Effect.sync(() => {
            current = { ...current, lastError: e.message }
          }),
        ),
      )
      const row = rows[0] ?? {}
      const now = Date.now()
      const xactCommit =
        row.xact_commit === null || row.xact_commit === undefined
          ? undefined
          : BigInt(String(row.xact_commit))
      const seconds = last ? Math.max(0.001, (now - last.at) / 1000) : 0
      const rate = last ? (count - last.count) / seconds : 0
      last = { at: now, count }
      if (xactCommit !== undefined) history.push({ at: now, xactCommit })
      while (history.length > 2 && now - history[0]!.at > 15_000) history.shift()
      const oldest = history[0]
      const dbRate =
        oldest !== undefined && xactCommit !== undefined && now > oldest.at
          ? Number(xactCommit - oldest.xactCommit) / ((now - oldest.at) / 1000)
          : 0
      const ratio = rate / threshold
      const level = ratio >= 1 ? "over-threshold" : ratio >= warnAt ? "near-threshold" : "ok"
      const commitLockWaits = Number(row.commit_lock_waits ?? 0)
      const queueWaits = Number(row.queue_waits ?? 0)
      const queueUsage = Number(row.queue_usage ?? 0)
      let warning = level === "ok" ? undefined : current.warning
      if (level !== "ok" && (current.level === "ok" || now - lastWarnAt >= warnEveryMs)) {
        lastWarnAt = now
        warning =
          `@bus/postgres-notify: ${round(rate)} notifying commits/s from this process is ` +
          `${Math.round(ratio * 100)}% of notifyRateThreshold ${threshold}/s ` +
          `(${commitLockWaits} backend(s) waiting on NOTIFY's commit lock, queue ${round(queueUsage * 100, 2)}% used). ` +
          "NOTIFY serialises committing transactions on one lock; move this bus to a broker before it does: " +
          "set BUS_TRANSPORT=nats (or redis-streams), or set BUS_NOTIFY_RATE to the measured rate with " +
          "transport 'auto' and BUS_BROKER configured. No producer or consumer code changes."
        yield* Effect.logWarning(warning)
      }
      current = {
        notifyingCommitsPerSecond: round(rate),
        notifyingCommits: count,
        databaseCommitsPerSecond: round(dbRate),
        notifyCommitLockWaits: commitLockWaits,
        notifyQueueWaits: queueWaits,
        notificationQueueUsage: queueUsage,
        notifyRateThreshold: threshold,
        thresholdRatio: round(ratio, 3),
        level,
        warning,
        samples: current.samples + 1,
        sampledAt: new Date(now).toISOString(),
        lastError: undefined,
      }
      const m = pressureMetrics
      yield* Metric.update(
        Metric.withAttributes(m.notifyingCommitsPerSecond, attrs),
        current.notifyingCommitsPerSecond,
      )
      yield* Metric.update(
        Metric.withAttributes(m.databaseCommitsPerSecond, attrs),
        current.databaseCommitsPerSecond,
      )
      yield* Metric.update(Metric.withAttributes(m.notifyCommitLockWaits, attrs), commitLockWaits)
      yield* Metric.update(Metric.withAttributes(m.notifyQueueWaits, attrs), queueWaits)
      yield* Metric.update(Metric.withAttributes(m.notificationQueueUsage, attrs), queueUsage)
      yield* Metric.update(Metric.withAttributes(m.thresholdRatio, attrs), current.thresholdRatio)
      return current
    })

    if (intervalMs > 0) {
      yield* sample.pipe(
        Effect.catch((e: BusError) =>
          Effect.logDebug(`@bus/postgres-notify: pressure sample failed: ${e.message}`),
        ),
        Effect.andThen(Effect.sleep(intervalMs)),
        Effect.forever,
        Effect.forkScoped,
      )
    }

    return {
      count: (n = 1) => {
        count += n
      },
      snapshot: () => ({ ...current, notifyingCommits: count }),
      sample,
    }
  })
