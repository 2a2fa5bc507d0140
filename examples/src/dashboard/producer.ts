import type { Bus, EventInput } from "@bus/core"
import type pg from "pg"
import { type JobRow, jobColumns, type RunRow, runColumns } from "./schema.js"

/**
 * The simulated application: agent pipelines whose runs and jobs move through their
 * states. Every state change is one database transaction that updates `demo.runs` /
 * `demo.jobs` and publishes the matching events with `bus.publish(client, …)` on the same
 * client, so the events exist exactly when the rows do.
 *
 * Events (tenant `demo`):
 * - channel `runs`: `run.started`, `run.finished`, `run.archived`
 * - channel `jobs`: `job.queued`, `job.running`, `job.succeeded`, `job.failed`, `job.skipped`
 * - channel `alerts`: `alert.insert`, published by a trigger on `demo.alerts` (no
 *   `bus.publish` call: the producer only inserts the row)
 *
 * @module
 */

export const tenant = "demo"
export const channels = ["runs", "jobs", "alerts"] as const

const pipelines: ReadonlyArray<{
  name: string
  steps: ReadonlyArray<string>
  titles: ReadonlyArray<string>
}> = [
  {
    name: "code-review",
    steps: ["checkout", "plan", "lint", "review", "summarize"],
    titles: ["PR #4821 retry budget", "PR #4830 pool sizing", "PR #4837 cursor docs", "PR #4842 relay lease"],
  },
  {
    name: "support-triage",
    steps: ["classify", "retrieve", "draft", "policy-check"],
    titles: ["Ticket 10231 refund", "Ticket 10244 login loop", "Ticket 10250 invoice", "Ticket 10262 export"],
  },
  {
    name: "research-brief",
    steps: ["plan", "search", "read", "synthesize", "cite-check"],
    titles: ["Brief: vector indexes", "Brief: CDC options", "Brief: queue pricing", "Brief: edge caching"],
  },
  {
    name: "release-notes",
    steps: ["collect", "group", "write", "proofread"],
    titles: ["Notes v2.14", "Notes v2.15", "Notes v3.0-rc1", "Notes v3.0"],
  },
]
const agents = ["planner", "coder", "critic", "retriever", "writer", "verifier"]

/** Producer settings. */
export interface ProducerOptions {
  /** Most state-change transactions per second (default 10). */
  readonly rate?: number
  /** Runs in progress at once (default 6). */
  readonly maxActive?: number
  /** Runs kept in the tables; older finished runs are archived (default 10). */
  readonly keepRuns?: number
  /** Chance that one attempt of a job fails (default 0.18); a job gets two attempts. */
  readonly failureRate?: number
  /** Told about a transaction that failed (it is rolled back; the producer carries on). */
  readonly onError?: (error: unknown) => void
}

/** Counters the dashboard and the console show. */
export interface ProducerStats {
  readonly transactions: number
  readonly events: number
  readonly failedTransactions: number
  readonly activeRuns: number
  readonly paused: boolean
}

interface ActiveJob {
  row: JobRow
  /** When the current state may move on (ms since epoch). */
  readyAt: number
}

interface ActiveRun {
  row: RunRow
  jobs: ActiveJob[]
}

/** The running producer. */
export interface Producer {
  /** Stops starting transactions; resolves once the one in flight (if any) has committed or rolled back. */
  pause(): Promise<void>
  resume(): void
  stats(): ProducerStats
  /** Stops for good (as `pause`, plus the timer). */
  stop(): Promise<void>
}

const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(Math.random() * items.length)]!
const between = (min: number, max: number) => min + Math.random() * (max - min)

/** Starts the producer on `pool`, publishing through `bus`. */
export const startProducer = (bus: Bus, pool: pg.Pool, options: ProducerOptions = {}): Producer => {
  const rate = options.rate ?? 10
  const maxActive = options.maxActive ?? 6
  const keepRuns = options.keepRuns ?? 10
  const failureRate = options.failureRate ?? 0.18
  const interval = 1000 / rate
  const active: ActiveRun[] = []
  /** Finished runs still in the tables, oldest first: archived in id order. */
  const finished: number[] = []
  let nextStartAt = 0
  let transactions = 0
  let events = 0
  let failedTransactions = 0
  let paused = false
  let stopped = false
  let timer: NodeJS.Timeout | undefined
  let inFlight: Promise<void> = Promise.resolve()

  /** Runs `work` in one transaction; `work` returns the events to publish in it. */
  const transaction = async (work: (client: pg.PoolClient) => Promise<EventInput[]>): Promise<boolean> => {
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      const batch = await work(client)
      if (batch.length > 0) await bus.publish(client, batch)
      await client.query("COMMIT")
      transactions += 1
      events += batch.length
      return true
    } catch (error) {
      failedTransactions += 1
      await client.query("ROLLBACK").catch(() => {})
      options.onError?.(error)
      return false
    } finally {
      client.release()
    }
  }

  const runEvent = (type: string, run: RunRow): EventInput => ({
    tenant,
    channel: "runs",
    type,
    data: { ...run },
  })
  const jobEvent = (type: string, job: JobRow): EventInput => ({
    tenant,
    channel: "jobs",
    type,
    data: { ...job },
  })

  const startRun = async (now: number) => {
    const pipeline = pick(pipelines)
    let created: ActiveRun | undefined
    const archivable = Math.max(0, finished.length + active.length + 1 - keepRuns)
    const archive = finished.slice(0, archivable)
    const ok = await transaction(async (client) => {
      const out: EventInput[] = []
      if (archive.length > 0) {
        const through = archive[archive.length - 1]!
        await client.query("DELETE FROM demo.runs WHERE id = ANY($1::int[])", [archive])
        await client.query("UPDATE demo.meta SET archived_through = $1", [through])
        for (const runId of archive) {
          out.push({
            tenant,
            channel: "runs",
            type: "run.archived",
            data: { runId, archivedThrough: through },
          })
        }
      }
      const run = await client.query<RunRow>(
        `INSERT INTO demo.runs (pipeline, title, status, version, started_at)
         VALUES ($1, $2, 'running', 1, now()) RETURNING ${runColumns}`,
        [pipeline.name, pick(pipeline.titles)],
      )
      const runRow = run.rows[0]!
      const jobs = await client.query<JobRow>(
        `INSERT INTO demo.jobs (run_id, step, name, status, attempt, version)
         SELECT $1, s.step, s.name, 'queued', 1, 1 FROM unnest($2::text[]) WITH ORDINALITY AS s(name, step)
         RETURNING ${jobColumns}`,
        [runRow.id, pipeline.steps],
      )
      const jobRows = [...jobs.rows].sort((a, b) => a.step - b.step)
      out.push(runEvent("run.started", runRow))
      for (const job of jobRows) out.push(jobEvent("job.queued", job))
      created = { row: runRow, jobs: jobRows.map((row) => ({ row, readyAt: now + between(200, 700) })) }
      return out
    })
    if (ok && created) {
      finished.splice(0, archive.length)
      active.push(created)
    }
  }

  const updateJob = (client: pg.PoolClient, job: JobRow, set: string, params: unknown[] = []) =>
    client
      .query<JobRow>(
        `UPDATE demo.jobs SET ${set}, version = version + 1 WHERE id = $1 RETURNING ${jobColumns}`,
        [job.id, ...params],
      )
      .then((r) => r.rows[0]!)

  const finishRun = async (client: pg.PoolClient, run: ActiveRun, status: "succeeded" | "failed") => {
    const r = await client.query<RunRow>(
      `UPDATE demo.runs SET status = $2, finished_at = now(), version = version + 1 WHERE id = $1
       RETURNING ${runColumns}`,
      [run.row.id, status],
    )
    return r.rows[0]!
  }

  /** Moves one run's current job one state on; false when nothing in it is due yet. */
  const advance = async (run: ActiveRun, now: number): Promise<boolean> => {
    const current = run.jobs.find((j) => j.row.status !== "succeeded")
    if (current === undefined || current.readyAt > now) return false
    const job = current.row
    let next: JobRow | undefined
    let runDone: "succeeded" | "failed" | undefined
    const skipped: JobRow[] = []
    let runRow: RunRow | undefined
    const ok = await transaction(async (client) => {
      const out: EventInput[] = []
      if (job.status === "queued") {
        next = await updateJob(client, job, "status = 'running', agent = $2, started_at = now()", [
          pick(agents),
        ])
        out.push(jobEvent("job.running", next))
      } else if (job.status === "running") {
        const failed = Math.random() < failureRate
        next = await updateJob(
          client,
          job,
          `status = '${failed ? "failed" : "succeeded"}', finished_at = now()`,
        )
        out.push(jobEvent(failed ? "job.failed" : "job.succeeded", next))
        if (failed) {
          // Plain SQL: the table's publish trigger publishes the alert in this transaction.
          await client.query("INSERT INTO demo.alerts (tenant, run_id, message) VALUES ($1, $2, $3)", [
            tenant,
            next.runId,
            `${next.name} failed on attempt ${next.attempt}${next.agent ? ` (${next.agent})` : ""}`,
          ])
        }
        const last = run.jobs[run.jobs.length - 1] === current
        if (failed && job.attempt >= 2) runDone = "failed"
        else if (!failed && last) runDone = "succeeded"
        if (runDone === "failed") {
          for (const rest of run.jobs.filter((j) => j.row.status === "queued")) {
            const s = await updateJob(client, rest.row, "status = 'skipped'")
            skipped.push(s)
            out.push(jobEvent("job.skipped", s))
          }
        }
        if (runDone) {
          runRow = await finishRun(client, run, runDone)
          out.push(runEvent("run.finished", runRow))
        }
      } else if (job.status === "failed") {
        next = await updateJob(
          client,
          job,
          "status = 'queued', attempt = attempt + 1, agent = NULL, started_at = NULL, finished_at = NULL",
        )
        out.push(jobEvent("job.queued", next))
      }
      return out
    })
    if (!ok || next === undefined) return ok
    current.row = next
    current.readyAt =
      next.status === "running" ? now + between(500, 1800) : next.status === "failed" ? now + 600 : now + 250
    for (const s of skipped) {
      const j = run.jobs.find((x) => x.row.id === s.id)
      if (j) j.row = s
    }
    if (runDone && runRow) {
      run.row = runRow
      active.splice(active.indexOf(run), 1)
      finished.push(run.row.id)
      finished.sort((a, b) => a - b)
    }
    return true
  }

  const step = async () => {
    const now = Date.now()
    if (active.length < maxActive && now >= nextStartAt) {
      nextStartAt = now + between(700, 1800)
      return startRun(now)
    }
    // The run whose current job has waited longest goes first, so runs progress evenly.
    const due = active
      .map((run) => ({ run, at: run.jobs.find((j) => j.row.status !== "succeeded")?.readyAt ?? Infinity }))
      .filter((d) => d.at <= now)
      .sort((a, b) => a.at - b.at)
    for (const { run } of due) if (await advance(run, now)) return
  }

  // Each pause bumps the generation, so a timer or a step of an earlier run of the loop stops.
  let generation = 0
  const loop = (gen: number) => {
    timer = undefined
    if (gen !== generation || stopped) return
    const began = Date.now()
    const live = () => gen === generation && !stopped
    inFlight = inFlight.then(() => (live() ? step() : undefined)).catch((error) => options.onError?.(error))
    void inFlight.then(() => {
      if (live()) timer = setTimeout(() => loop(gen), Math.max(0, interval - (Date.now() - began)))
    })
  }
  loop(generation)

  return {
    pause: async () => {
      paused = true
      generation += 1
      if (timer) clearTimeout(timer)
      timer = undefined
      await inFlight
    },
    resume: () => {
      if (stopped || !paused) return
      paused = false
      generation += 1
      loop(generation)
    },
    stats: () => ({ transactions, events, failedTransactions, activeRuns: active.length, paused }),
    stop: async () => {
      stopped = true
      generation += 1
      if (timer) clearTimeout(timer)
      timer = undefined
      await inFlight
    },
  }
}
