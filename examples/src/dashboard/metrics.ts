import type pg from "pg"

/**
 * What the dashboard measures: statements the database executed (honestly, from
 * Postgres' own statistics), delivery latency, and rates.
 *
 * @module
 */

/** Categories of statements, by what issued them. */
export interface QueryBreakdown {
  /** Outbox appends and reads, LISTEN/UNLISTEN/NOTIFY, the fallback poll, the pressure monitor. */
  readonly bus: number
  /** The demo's own statements on `demo.runs` / `demo.jobs` (producer writes, page snapshots). */
  readonly app: number
  /** BEGIN / COMMIT / ROLLBACK and session settings. */
  readonly control: number
  /** Anything else (connection checks, catalog lookups). */
  readonly other: number
}

/** A reading of {@link QueryMeter}. */
export interface QueryRate {
  /** How the number was measured. */
  readonly method: "pg_stat_statements" | "pg_stat_database"
  /** What the number counts, in a sentence (shown as the dashboard's tooltip). */
  readonly description: string
  /** Statements (or, with `pg_stat_database`, transactions) per minute over the window. */
  readonly perMinute: number
  /** Per category, per minute (only with `pg_stat_statements`). */
  readonly breakdown: QueryBreakdown | undefined
  /** Seconds the rate is measured over (up to 60). */
  readonly windowSeconds: number
}

interface Sample {
  readonly at: number
  readonly total: number
  readonly breakdown: QueryBreakdown | undefined
}

// pg_stat_statements keeps a statement's text from its first token, so a leading comment is
// lost; a column alias survives normalisation and marks the sampler's own queries.
const marker = "bus_demo_metrics"

const categorize = (query: string): keyof QueryBreakdown => {
  const q = query.trimStart()
  if (/^(BEGIN|COMMIT|ROLLBACK|START\s|END\b|SAVEPOINT|RELEASE|SET\s|RESET\s|SHOW\s|DISCARD)/i.test(q))
    return "control"
  if (/"bus"\.|\bbus\.|pg_notify|^(UN)?LISTEN\b|^NOTIFY\b|pg_notification_queue_usage/i.test(q)) return "bus"
  if (/\bdemo\./i.test(q)) return "app"
  return "other"
}

/**
 * Counts the statements the database executes, sampled once a second.
 *
 * With `pg_stat_statements` loaded (the demo loads it into its own Postgres) the count is
 * the sum of `calls` of every statement of this database, excluding the sampler's own
 * queries, split by what issued them. Without it (an external database, `BUS_PG_URL`),
 * it falls back to `xact_commit + xact_rollback` of `pg_stat_database`: transactions,
 * not statements, again minus the sampler's own.
 */
export class QueryMeter {
  private readonly samples: Sample[] = []
  private readonly previous = new Map<string, number>()
  private totals = { bus: 0, app: 0, control: 0, other: 0 }
  private sampledTransactions = 0

  private constructor(
    private readonly db: pg.Pool,
    readonly method: QueryRate["method"],
  ) {}

  /** Uses `pg_stat_statements` when the extension can be created and queried, else `pg_stat_database`. */
  static async create(db: pg.Pool): Promise<QueryMeter> {
    try {
      await db.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
      await db.query(`SELECT 1 AS ${marker} FROM pg_stat_statements LIMIT 1`)
      const meter = new QueryMeter(db, "pg_stat_statements")
      await meter.sample()
      return meter
    } catch {
      const meter = new QueryMeter(db, "pg_stat_database")
      await meter.sample()
      return meter
    }
  }

  /** Takes one sample (one query). */
  async sample(): Promise<void> {
    const at = Date.now()
    if (this.method === "pg_stat_statements") {
      const { rows } = await this.db.query<{ id: string; query: string; calls: string }>(
        `SELECT s.queryid::text || ':' || s.userid::text || ':' || s.toplevel::text AS id,
           s.query, s.calls::text AS calls, true AS ${marker}
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = current_database() AND s.query NOT LIKE '%${marker}%'`,
      )
      for (const row of rows) {
        const calls = Number(row.calls)
        const before = this.previous.get(row.id) ?? 0
        // An entry evicted and re-created restarts from 0: count its calls since then.
        const delta = calls >= before ? calls - before : calls
        this.previous.set(row.id, calls)
        this.totals[categorize(row.query)] += delta
      }
      const t = this.totals
      this.push({ at, total: t.bus + t.app + t.control + t.other, breakdown: { ...t } })
    } else {
      const { rows } = await this.db.query<{ n: string }>(
        `SELECT (xact_commit + xact_rollback)::text AS n, true AS ${marker} FROM pg_stat_database
         WHERE datname = current_database()`,
      )
      // Every sample is a transaction of its own: leave the sampler's out.
      this.sampledTransactions += 1
      this.push({ at, total: Number(rows[0]?.n ?? 0) - this.sampledTransactions, breakdown: undefined })
    }
  }

  private push(sample: Sample) {
    this.samples.push(sample)
    while (this.samples.length > 2 && sample.at - this.samples[1]!.at >= 60_000) this.samples.shift()
  }

  /** Statements per minute over the last 60 s (extrapolated while fewer have passed). */
  rate(): QueryRate {
    const first = this.samples[0]
    const last = this.samples[this.samples.length - 1]
    const seconds = first && last ? (last.at - first.at) / 1000 : 0
    const scale = seconds > 0 ? 60 / seconds : 0
    const per = (a: number, b: number) => Math.max(0, Math.round((b - a) * scale))
    const breakdown =
      first?.breakdown && last?.breakdown
        ? {
            bus: per(first.breakdown.bus, last.breakdown.bus),
            app: per(first.breakdown.app, last.breakdown.app),
            control: per(first.breakdown.control, last.breakdown.control),
            other: per(first.breakdown.other, last.breakdown.other),
          }
        : undefined
    return {
      method: this.method,
      description:
        this.method === "pg_stat_statements"
          ? "Statements Postgres executed in this database per minute (last 60 s), from pg_stat_statements " +
            "(sum of calls), excluding the dashboard's own metrics queries. bus = outbox appends and reads, " +
            "LISTEN/NOTIFY, fallback poll, pressure monitor; app = the demo's runs/jobs statements; " +
            "tx = BEGIN/COMMIT/ROLLBACK."
          : "Transactions Postgres committed or rolled back in this database per minute (last 60 s), from " +
            "pg_stat_database (xact_commit + xact_rollback), excluding the dashboard's own metrics queries. " +
            "pg_stat_statements is not loaded in this database, so statements are not counted one by one.",
      perMinute: first && last ? per(first.total, last.total) : 0,
      breakdown,
      windowSeconds: Math.round(seconds),
    }
  }
}

/** Samples (ms) over a sliding time window, with percentiles. */
export class LatencyWindow {
  private readonly values: Array<{ at: number; ms: number }> = []
  constructor(private readonly windowMs = 10_000) {}

  add(ms: number, at = Date.now()): void {
    if (!Number.isFinite(ms)) return
    this.values.push({ at, ms })
    this.trim(at)
  }

  private trim(now: number) {
    while (this.values.length > 0 && now - this.values[0]!.at > this.windowMs) this.values.shift()
    if (this.values.length > 5_000) this.values.splice(0, this.values.length - 5_000)
  }

  /** p50, p95 and count over the window; `undefined` percentiles when empty. */
  summary(): { p50: number | undefined; p95: number | undefined; count: number } {
    this.trim(Date.now())
    const sorted = this.values.map((v) => v.ms).sort((a, b) => a - b)
    const at = (q: number) =>
      sorted.length === 0 ? undefined : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
    return { p50: at(0.5), p95: at(0.95), count: sorted.length }
  }
}

/** Events per second over the last few seconds, from a monotonically growing counter. */
export class RateMeter {
  private readonly points: Array<{ at: number; value: number }> = []
  constructor(private readonly windowMs = 3_000) {}

  record(value: number, at = Date.now()): void {
    this.points.push({ at, value })
    while (this.points.length > 2 && at - this.points[0]!.at > this.windowMs) this.points.shift()
  }

  perSecond(): number {
    const first = this.points[0]
    const last = this.points[this.points.length - 1]
    if (!first || !last || last.at === first.at) return 0
    return ((last.value - first.value) * 1000) / (last.at - first.at)
  }
}
