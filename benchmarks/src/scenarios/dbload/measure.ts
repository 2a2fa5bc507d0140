import type { Subscription } from "@bus/core"
import type pg from "pg"
import { type Arm, runInterleaved, summarize } from "../../harness/blocks.js"
import { type BenchEnv, withClient } from "../../harness/env.js"
import { fmtNum } from "../../harness/progress.js"
import type { BlockRecord, TransportId } from "../../harness/types.js"
import { type Pipe, PRIMER, readiness, sleep, tenant } from "../../targets/pipe.js"
import { ensurePollSchema, pollPipe, startPollers } from "../../targets/poll.js"
import { openSdkBus, type SdkBus, sdkPipe, subscribeMany } from "../../targets/sdk.js"
import type { Scenario, ScenarioContext } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"

/**
 * 4. Database load: how many statements the database runs for idle subscribers, and per
 * delivered event under load, against a 3 s polling baseline. Each arm connects as its
 * own role, so pg_stat_statements (when loadable) attributes every statement to the arm
 * that ran it; producers run as a separate role and are reported apart.
 */

const rolePassword = "bench"

export const roleUrl = (url: string, role: string): string => {
  const u = new URL(url)
  u.username = role
  u.password = rolePassword
  return u.toString()
}

const ensureRole = async (url: string, role: string) =>
  withClient(url, async (c) => {
    const exists = await c.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role])
    if (exists.rowCount === 0) await c.query(`CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD '${rolePassword}'`)
  })

interface RoleCount {
  readonly calls: number
  readonly top: ReadonlyArray<{ readonly calls: number; readonly query: string }>
}

/** Counts statements per role (pg_stat_statements) or transactions of the database (fallback). */
class QueryCounter {
  #xact = 0
  constructor(
    readonly env: BenchEnv,
    readonly roles: readonly string[],
  ) {}

  get perRole(): boolean {
    return this.env.queryCountMethod === "pg_stat_statements"
  }

  async reset(): Promise<void> {
    await withClient(this.env.pgUrl, async (c) => {
      if (this.perRole) await c.query("SELECT pg_stat_statements_reset()")
      else this.#xact = await xacts(c)
    })
  }

  async read(): Promise<Map<string, RoleCount>> {
    return withClient(this.env.pgUrl, async (c) => {
      const out = new Map<string, RoleCount>()
      if (!this.perRole) {
        // Two of ours: this read's own transaction and the reset's.
        out.set("*", { calls: (await xacts(c)) - this.#xact - 2, top: [] })
        return out
      }
      const rows = await c.query(
        `SELECT r.rolname AS role, s.calls::float8 AS calls, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 140) AS query
           FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
          WHERE r.rolname = ANY($1) ORDER BY s.calls DESC`,
        [this.roles],
      )
      for (const role of this.roles) {
        const mine = rows.rows.filter((r) => r.role === role)
        out.set(role, {
          calls: mine.reduce((a, r) => a + Number(r.calls), 0),
          top: mine.slice(0, 6).map((r) => ({ calls: Number(r.calls), query: String(r.query) })),
        })
      }
      return out
    })
  }
}

const xacts = async (c: pg.Client): Promise<number> => {
  const r = await c.query(
    "SELECT (xact_commit + xact_rollback)::float8 AS n FROM pg_stat_database WHERE datname = current_database()",
  )
  return Number(r.rows[0]?.n ?? 0)
}

interface IdleArm {
  readonly id: string
  readonly label: string
  readonly transport: TransportId | "postgres"
  readonly variant: string
  readonly role: string
  readonly subscribers: number
  readonly unavailable?: string
  start(): Promise<() => Promise<void>>
}

/** SDK subscribers on `count` distinct channels, live (primed) before returning. */
const sdkIdle = async (
  ctx: ScenarioContext,
  transport: TransportId,
  role: string,
  count: number,
): Promise<() => Promise<void>> => {
  const producerUrl = roleUrl(ctx.env.pgUrl, "bench_producer")
  const sdk: SdkBus = await openSdkBus({
    transport,
    env: ctx.env,
    schema: `bench_dbload_${transport.replace("-", "_")}`,
    storeUrl: roleUrl(ctx.env.pgUrl, role),
    producerUrl,
  })
  const channels = Array.from({ length: count }, () => ctx.channel("idle"))
  const ready = readiness(count, () => undefined)
  const errors: string[] = []
  const subs: Subscription[] = channels.flatMap((channel, i) =>
    subscribeMany(sdk.bus, channel, 1, (d) => ready.onReceive(d.s, d.t, i, 0), errors),
  )
  try {
    await ready.waitLive(async () => {
      // One primer per channel, in transactions of 100.
      for (let i = 0; i < channels.length; i += 100) {
        await sdk.publish(
          channels
            .slice(i, i + 100)
            .map((channel) => ({ tenant, channel, type: "bench.primer", data: { s: PRIMER, t: 0 } })),
        )
      }
    }, ctx.profile.fanout.setupTimeoutMs)
  } catch (error) {
    await Promise.all(subs.map((s) => s.close()))
    await sdk.close()
    throw error
  }
  return async () => {
    await Promise.all(subs.map((s) => s.close()))
    await sdk.close()
  }
}

const pollIdle = async (ctx: ScenarioContext, role: string, count: number) => {
  await ensurePollSchema(ctx.env.pgUrl)
  const channels = Array.from({ length: count }, () => ctx.channel("poll"))
  const pollers = await startPollers(
    roleUrl(ctx.env.pgUrl, role),
    channels,
    ctx.profile.dbLoad.pollIntervalMs,
    () => undefined,
  )
  return () => pollers.stop()
}

export const dbLoad: Scenario = {
  id: "dbload",
  title: "Database load: idle subscribers and queries per event",
  run: async (ctx) => {
    const p = ctx.profile.dbLoad
    const pgServer = ctx.serverReason("postgres-notify")
    const pgSdk = ctx.reason("postgres-notify")
    const idle: IdleArm[] = []
    for (const n of p.subscriberCounts) {
      idle.push({
        id: `postgres-notify|idle|n=${n}`,
        label: `postgres-notify (SDK), ${n} idle subscribers`,
        transport: "postgres-notify",
        variant: "sdk",
        role: `bench_sdk_idle_${n}`,
        subscribers: n,
        ...(pgSdk ? { unavailable: pgSdk } : {}),
        start: () => sdkIdle(ctx, "postgres-notify", `bench_sdk_idle_${n}`, n),
      })
      idle.push({
        id: `poll|idle|n=${n}`,
        label: `polling every ${p.pollIntervalMs / 1000} s, ${n} idle subscribers`,
        transport: "postgres",
        variant: "poll",
        role: `bench_poll_idle_${n}`,
        subscribers: n,
        ...(pgServer ? { unavailable: pgServer } : {}),
        start: () => pollIdle(ctx, `bench_poll_idle_${n}`, n),
      })
    }
    const brokerN = p.subscriberCounts[0] ?? 100
    for (const t of ["nats", "redis-streams"] as const) {
      if (!ctx.transports.includes(t)) continue
      const role = `bench_${t.replace("-", "_")}_idle`
      const reason = pgServer ?? ctx.reason(t)
      idle.push({
        id: `${t}|idle|n=${brokerN}`,
        label: `${t} (SDK, relay in-process), ${brokerN} idle subscribers`,
        transport: t,
        variant: "sdk",
        role,
        subscribers: brokerN,
        ...(reason ? { unavailable: reason } : {}),
        start: () => sdkIdle(ctx, t, role, brokerN),
      })
    }
    const roles = [
      ...idle.map((a) => a.role),
      "bench_producer",
      "bench_sdk_load",
      "bench_poll_load",
      "bench_nats_load",
      "bench_redis_streams_load",
    ]
    const blocks: BlockRecord[] = []
    const top: Record<string, unknown> = {}
    const notes: string[] = []
    for (const arm of idle) {
      if (arm.unavailable !== undefined)
        ctx.progress.line(`dbload  ${arm.label}: not available: ${arm.unavailable}`)
    }
    if (pgServer === undefined) {
      for (const role of roles) await ensureRole(ctx.env.pgUrl, role)
      const counter = new QueryCounter(ctx.env, roles)
      // Idle: all arms at once when statements are counted per role, else one after the other.
      const groups = counter.perRole
        ? [idle.filter((a) => !a.unavailable)]
        : idle.filter((a) => !a.unavailable).map((a) => [a])
      for (const group of groups) {
        if (ctx.aborted()) break
        const stops: Array<() => Promise<void>> = []
        const started: IdleArm[] = []
        try {
          for (const arm of group) {
            ctx.progress.status(`dbload: starting ${arm.label}`)
            try {
              stops.push(await arm.start())
              started.push(arm)
            } catch (error) {
              const message = error instanceof Error ? error.message : String(error)
              blocks.push({
                arm: arm.id,
                block: 0,
                warmup: false,
                metrics: {},
                flags: ["error"],
                error: message,
              })
              ctx.progress.line(`dbload  ${arm.label}: setup failed: ${message}`)
            }
          }
          // Let the start-up reads and LISTENs finish, and (full run) one fallback poll pass: the
          // first poll after the primers re-reads every address that got rows since the last one.
          const settleUntil = performance.now() + p.idleSettleMs
          while (performance.now() < settleUntil) {
            ctx.progress.status(
              `dbload: settling ${((settleUntil - performance.now()) / 1000).toFixed(0)} s before counting`,
            )
            await sleep(250)
          }
          for (let b = 0; b < p.idleBlocks; b++) {
            if (ctx.aborted()) break
            await counter.reset()
            const from = performance.now()
            while (performance.now() - from < p.idleWindowMs) {
              ctx.progress.status(
                `dbload idle window ${((performance.now() - from) / 1000).toFixed(0)}/${p.idleWindowMs / 1000} s (${started.length} arms)`,
              )
              await sleep(250)
            }
            const counts = await counter.read()
            const minutes = (performance.now() - from) / 60_000
            for (const arm of started) {
              const c = counter.perRole ? counts.get(arm.role) : counts.get("*")
              const qpm = (c?.calls ?? Number.NaN) / minutes
              blocks.push({
                arm: arm.id,
                block: b,
                warmup: false,
                metrics: { subscribers: arm.subscribers, queriesPerMin: qpm, windowMs: minutes * 60_000 },
                flags: [],
              })
              if (c !== undefined && c.top.length > 0) top[arm.id] = c.top
              ctx.progress.line(
                `dbload  ${arm.label}  idle window ${b + 1}/${p.idleBlocks}: ${fmtNum(qpm)} queries/min`,
              )
            }
          }
        } finally {
          for (const stop of stops) await stop().catch(() => undefined)
        }
      }
    }
    // Under load: one channel, `loadSubscribers` subscribers, open loop at `loadRate`.
    const loadArms: Arm[] = []
    const counter = new QueryCounter(ctx.env, roles)
    const loadPipes: Array<{
      pipe: Pipe
      role: string
      transport: TransportId | "postgres"
      unavailable?: string
    }> = []
    if (pgServer === undefined) {
      const producerUrl = roleUrl(ctx.env.pgUrl, "bench_producer")
      loadPipes.push({
        pipe: sdkPipe("postgres-notify", ctx.env, {
          schema: "bench_dbload_load",
          storeUrl: roleUrl(ctx.env.pgUrl, "bench_sdk_load"),
          producerUrl,
        }),
        role: "bench_sdk_load",
        transport: "postgres-notify",
        ...(pgSdk ? { unavailable: pgSdk } : {}),
      })
      loadPipes.push({
        pipe: pollPipe({
          url: roleUrl(ctx.env.pgUrl, "bench_poll_load"),
          producerUrl,
          intervalMs: p.pollIntervalMs,
        }),
        role: "bench_poll_load",
        transport: "postgres",
      })
      for (const t of ["nats", "redis-streams"] as const) {
        if (!ctx.transports.includes(t)) continue
        const reason = ctx.reason(t)
        const role = `bench_${t.replace("-", "_")}_load`
        loadPipes.push({
          pipe: sdkPipe(t, ctx.env, {
            schema: `bench_dbload_${t.replace("-", "_")}_load`,
            storeUrl: roleUrl(ctx.env.pgUrl, role),
            producerUrl,
          }),
          role,
          transport: t,
          ...(reason ? { unavailable: reason } : {}),
        })
      }
    }
    for (const lp of loadPipes) {
      loadArms.push({
        id: `${lp.pipe.id}|load|rate=${p.loadRate}`,
        label: `${lp.pipe.label} under load ${p.loadRate}/s, ${p.loadSubscribers} subscribers`,
        transport: lp.transport,
        variant: lp.pipe.kind === "sdk" ? "sdk" : "poll",
        params: { rate: p.loadRate, subscribers: p.loadSubscribers },
        ...(lp.unavailable ? { unavailable: lp.unavailable } : {}),
        run: (_b, status) =>
          runDeliveryBlock({
            pipe: lp.pipe,
            channel: ctx.channel("dbl"),
            subscribers: p.loadSubscribers,
            payloadBytes: 256,
            durationMs: p.loadBlockMs,
            warmupMs: 0,
            drainMs: Math.max(ctx.profile.drainMs, p.pollIntervalMs + 1_000),
            readyTimeoutMs: Math.max(ctx.profile.readyTimeoutMs, p.pollIntervalMs * 4),
            cpu: ctx.cpu,
            status,
            load: { kind: "open", rate: p.loadRate },
            afterOpen: async () => {
              await sleep(500)
              await counter.reset()
              return {}
            },
            beforeClose: async ({ committedEvents }): Promise<Record<string, number>> => {
              const counts = await counter.read()
              if (!counter.perRole) {
                const all = counts.get("*")?.calls ?? Number.NaN
                return { queriesTotal: all, queriesPerEvent: all / committedEvents }
              }
              const consumer = counts.get(lp.role)
              const producer = counts.get("bench_producer")
              if (consumer !== undefined) top[`${lp.pipe.id}|load`] = consumer.top
              return {
                queriesPerEvent: (consumer?.calls ?? Number.NaN) / committedEvents,
                producerQueriesPerEvent: (producer?.calls ?? Number.NaN) / committedEvents,
                consumerQueries: consumer?.calls ?? Number.NaN,
              }
            },
          }),
      })
    }
    let load: ReturnType<typeof summarize> = { arms: [], blocks: [] }
    try {
      if (loadArms.length > 0)
        load = await runInterleaved(loadArms, {
          blocks: p.loadBlocks,
          warmupBlocks: 0,
          progress: ctx.progress,
          scenario: "dbload",
          aborted: ctx.aborted,
        })
    } finally {
      await Promise.allSettled(loadPipes.map((lp) => lp.pipe.close()))
    }
    const idleSummary = summarize(
      idle.map((a) => ({
        id: a.id,
        label: a.label,
        transport: a.transport,
        variant: a.variant,
        params: { subscribers: a.subscribers, mode: "idle" },
        ...(a.unavailable ? { unavailable: a.unavailable } : {}),
        run: async () => ({ metrics: {}, flags: [] }),
      })),
      blocks,
    )
    if (!counter.perRole)
      notes.push(
        "pg_stat_statements was not loadable: counts are transactions (pg_stat_database xact_commit + xact_rollback deltas) of the whole database, arms measured one after the other; a BEGIN … COMMIT block counts once.",
      )
    return {
      id: "dbload",
      title: dbLoad.title,
      method: [
        `Counting: ${ctx.env.queryCountMethod === "pg_stat_statements" ? "pg_stat_statements (every top-level statement, LISTEN/UNLISTEN included), reset at the start of each window; each arm connects as its own role, so statements are attributed per arm and the producers (role bench_producer) are counted apart" : "pg_stat_database xact_commit + xact_rollback deltas (pg_stat_statements not loadable)"}.`,
        `Idle: each arm opens its subscribers on distinct channels (one tenant channel per subscriber, the worst case for per-address work), makes sure every one is live (one primer event each), waits ${p.idleSettleMs / 1000} s, then counts for ${p.idleWindowMs / 1000} s. The SDK's fallback poll runs every 10 s (one statement per process). The first poll after the primers finds every primed address changed since its previous poll and wakes it, which costs one read per address once; a window that starts less than 10 s after set-up (the quick run) can include that pass.`,
        `Polling baseline: every subscriber runs \`SELECT … WHERE channel = $1 AND id > $2\` every ${p.pollIntervalMs / 1000} s (staggered).`,
        `Under load: ${p.loadSubscribers} subscribers on one channel, open loop at ${p.loadRate} events/s for ${p.loadBlockMs / 1000} s; queries per event = the subscriber side's statements / events committed (the producer's BEGIN / append / COMMIT are reported separately). For the brokers the database side is the relay (partition reads, one stored position per batch, lease renewals).`,
      ],
      arms: [...idleSummary.arms, ...load.arms],
      blocks: [...blocks, ...load.blocks],
      notes,
      derived: { topQueries: top },
    }
  },
}
