import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { migrate } from "@bus/postgres-notify"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { Redis } from "ioredis"
import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { CpuMeter, treeCpuMs } from "../../harness/cpu.js"
import { makePool } from "../../harness/pg.js"
import type { ArmSummary, BlockMeasurement } from "../../harness/types.js"
import { sleep } from "../../targets/pipe.js"
import type { Scenario } from "../context.js"

/**
 * 10. Relay scaling (issue 16): does adding application processes add relay throughput?
 * The same backlog, spread over every relay partition, is drained by 1, 2 and 3 relay
 * processes (separate OS processes, `targets/relayProcess.ts`, each a bus whose only work
 * is its in-process relay) sharing the outbox's partitions as a fleet would. The processes
 * start, agree on their shares (watched in `relay_partitions`), and only then is the backlog
 * committed, in one plain-SQL transaction from outside the SDK; the harness counts the
 * events on the broker.
 */

const tenants = 64
const payloadPad = "x".repeat(216)
const here = fileURLToPath(new URL(".", import.meta.url))
const relayProcess = fileURLToPath(new URL("../../targets/relayProcess.ts", import.meta.url))

interface Relay {
  readonly child: ChildProcess
  readonly exited: Promise<void>
}

const startRelay = (env: Record<string, string>): Promise<Relay> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", relayProcess], {
      cwd: here,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    })
    const exited = new Promise<void>((r) => child.once("exit", () => r()))
    let stderr = ""
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`relay process ${env.BENCH_OWNER} not ready in 60 s: ${stderr.slice(-500)}`))
    }, 60_000)
    child.stderr!.on("data", (c: Buffer) => {
      stderr = (stderr + c.toString()).slice(-5_000)
    })
    child.stdout!.on("data", (c: Buffer) => {
      if (c.toString().includes("ready")) {
        clearTimeout(timer)
        resolve({ child, exited })
      }
    })
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`relay process ${env.BENCH_OWNER} exited with ${code}: ${stderr.slice(-500)}`))
    })
  })

const stopRelay = async (r: Relay) => {
  if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill("SIGTERM")
  const timer = setTimeout(() => r.child.kill("SIGKILL"), 10_000)
  await r.exited
  clearTimeout(timer)
}

export const relayScaling: Scenario = {
  id: "relayScaling",
  title: "Relay scaling: 1, 2 and 3 relay processes",
  run: async (ctx) => {
    const p = ctx.profile.relayScaling
    const brokers = ctx.transports.filter(
      (t): t is "nats" | "redis-streams" => t === "nats" || t === "redis-streams",
    )
    const admin = makePool({ connectionString: ctx.env.pgUrl, application_name: "bench-scale-admin", max: 2 })
    const arms: Arm[] = []
    let serial = 0
    for (const t of brokers) {
      const reason = ctx.reason(t)
      for (const k of p.processes) {
        arms.push({
          id: `${t}|relays=${k}`,
          label: `${t}: ${k} relay process${k > 1 ? "es" : ""}`,
          transport: t,
          variant: "relays",
          params: { pipe: t, relays: k, backlog: p.events },
          ...(reason ? { unavailable: reason } : {}),
          run: async (_block, status): Promise<BlockMeasurement> => {
            serial++
            const tag =
              `${t === "nats" ? "n" : "r"}${k}x${serial}${ctx.runId.replace(/[^a-z0-9]/gi, "").slice(-6)}`.toLowerCase()
            const schema = `bench_scale_${tag}`
            const prefix = `bscale${tag}`
            const channel = "scale"
            const brokerUrl = (t === "nats" ? ctx.env.nats?.url : ctx.env.redis?.url) as string
            await migrate({ connectionString: ctx.env.pgUrl, schema })
            const relays: Relay[] = []
            const nc =
              t === "nats" ? await connect({ servers: brokerUrl, name: "bench-scale-counter" }) : undefined
            const redis =
              t === "redis-streams"
                ? new Redis(brokerUrl, { connectionName: "bench-scale-counter" })
                : undefined
            redis?.on("error", () => undefined)
            const count = async (): Promise<number> => {
              if (nc !== undefined) {
                const jsm = await jetstreamManager(nc)
                return (
                  (await jsm.streams.info(prefix.toUpperCase()).catch(() => undefined))?.state.messages ?? 0
                )
              }
              const pipe = redis!.pipeline()
              for (let i = 0; i < tenants; i++) pipe.xlen(`${prefix}:{x${i}}:${channel}`)
              return ((await pipe.exec()) ?? []).reduce((s, [e, n]) => s + (e === null ? Number(n) : 0), 0)
            }
            try {
              status(`starting ${k} relay process(es)`)
              for (let i = 0; i < k; i++)
                relays.push(
                  await startRelay({
                    BENCH_PG_URL: ctx.env.pgUrl,
                    BENCH_SCHEMA: schema,
                    BENCH_BROKER: t,
                    BENCH_BROKER_URL: brokerUrl,
                    BENCH_PREFIX: prefix,
                    BENCH_OWNER: `scale-${tag}-${i}`,
                  }),
                )
              status("waiting for the relays to share the partitions")
              const shareDeadline = Date.now() + 30_000
              let owners = 0
              let partitions = 0
              for (;;) {
                const { rows } = await admin.query<{ owners: number; held: number; total: number }>(
                  `SELECT count(DISTINCT owner) FILTER (WHERE lease_until > now())::int AS owners,
                          count(*) FILTER (WHERE lease_until > now())::int AS held, count(*)::int AS total
                   FROM ${schema}.relay_partitions`,
                )
                owners = rows[0]?.owners ?? 0
                partitions = rows[0]?.total ?? 0
                if (owners === k && rows[0]?.held === partitions) break
                if (Date.now() > shareDeadline)
                  throw new Error(`relays did not share the partitions: ${JSON.stringify(rows)}`)
                await sleep(100)
              }
              status(`committing ${p.events} events over ${tenants} addresses`)
              const cpu0 = ctx.cpu.sample()
              const relayCpu0 = relays.map((r) => treeCpuMs(r.child.pid!) ?? Number.NaN)
              const committed0 = performance.now()
              await admin.query(
                `INSERT INTO ${schema}.outbox (id, tenant, channel, type, data, headers, event_time)
                 SELECT gen_random_uuid(), 'x' || (g % ${tenants}), '${channel}', 'scale.row',
                        jsonb_build_object('i', g, 'p', '${payloadPad}'), '{}'::jsonb, now()
                 FROM generate_series(1, ${p.events}) g`,
              )
              const committed = performance.now()
              const deadline = committed + p.drainTimeoutMs
              let t10 = Number.NaN
              let t90 = Number.NaN
              let n = 0
              while (n < p.events && performance.now() < deadline) {
                await sleep(20)
                n = await count()
                const at = performance.now()
                if (Number.isNaN(t10) && n >= p.events * 0.1) t10 = at
                if (Number.isNaN(t90) && n >= p.events * 0.9) t90 = at
              }
              const done = performance.now()
              const cpu1 = ctx.cpu.sample()
              const relayCpuMs = relays.reduce(
                (s, r, i) => s + ((treeCpuMs(r.child.pid!) ?? Number.NaN) - (relayCpu0[i] as number)),
                0,
              )
              const pgMs = CpuMeter.delta(cpu0, cpu1).serversMs.postgres
              const flags = n < p.events ? [`drained ${n} of ${p.events} in ${p.drainTimeoutMs} ms`] : []
              return {
                metrics: {
                  forwardedPerSec: (p.events * 0.8) / ((t90 - t10) / 1000),
                  drainMs: done - committed,
                  commitMs: committed - committed0,
                  relayCpuUsPerEvent: (relayCpuMs * 1000) / Math.max(1, n),
                  ...(pgMs !== undefined ? { pgUsPerEvent: (pgMs * 1000) / Math.max(1, n) } : {}),
                  partitions,
                  forwarded: n,
                },
                flags,
              }
            } finally {
              await Promise.allSettled(relays.map(stopRelay))
              if (nc !== undefined) {
                const jsm = await jetstreamManager(nc)
                await jsm.streams.delete(prefix.toUpperCase()).catch(() => undefined)
                await nc.close()
              }
              if (redis !== undefined) {
                const keys = await redis.keys(`${prefix}:*`).catch(() => [] as string[])
                if (keys.length > 0) await redis.del(...keys).catch(() => undefined)
                redis.disconnect()
              }
              await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined)
            }
          },
        })
      }
    }
    let result: Awaited<ReturnType<typeof runInterleaved>>
    try {
      result = await runInterleaved(arms, {
        blocks: p.blocks,
        warmupBlocks: 0,
        progress: ctx.progress,
        scenario: "relayScaling",
        aborted: ctx.aborted,
      })
    } finally {
      await admin.end()
    }
    return {
      id: relayScaling.id,
      title: relayScaling.title,
      method: [
        `Per broker and relay-process count K (${p.processes.join(", ")}): a fresh outbox schema; K relay processes (separate OS processes, \`benchmarks/src/targets/relayProcess.ts\`: a bus over that schema whose only work is its in-process relay, default relay options, each its own owner) start and the harness waits until \`relay_partitions\` shows every partition held by K live owners; then ${p.events.toLocaleString("en")} events (data ≈ 256 B) over ${tenants} addresses (so every partition has work) are committed in one plain-SQL transaction from outside the SDK.`,
        "Forwarding rate: events on the broker (JetStream stream message count; Redis: XLEN summed over the addresses, polled every ~20 ms) between 10 % and 90 % of the backlog, divided by the time between. Relay CPU: the K processes' CPU time (`/proc`) over the drain, per forwarded event; Postgres CPU likewise for the server's process tree.",
        "Every process shares the machine's 2 cores with Postgres and the broker: the figure says how much more one machine gets from more processes, and what one relay process costs per event, the unit docs/scaling.md builds on.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
      derived: analyseRelayScaling(result.arms),
    }
  },
}

/** Per broker: the forwarding rate with each process count, and its ratio to one process. */
export const analyseRelayScaling = (arms: readonly ArmSummary[]) => {
  const out: Record<string, Record<string, { rate: number; ratio: number; relayCpuUs: number }>> = {}
  for (const a of arms.filter((x) => x.status === "ok")) {
    const t = String(a.params.pipe)
    const one = arms.find((x) => x.params.pipe === t && x.params.relays === 1 && x.status === "ok")
    const rate = a.metrics.forwardedPerSec?.median ?? Number.NaN
    out[t] ??= {}
    out[t][String(a.params.relays)] = {
      rate,
      ratio: rate / (one?.metrics.forwardedPerSec?.median ?? Number.NaN),
      relayCpuUs: a.metrics.relayCpuUsPerEvent?.median ?? Number.NaN,
    }
  }
  return { brokers: out }
}
