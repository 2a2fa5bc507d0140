import { type Address, uuidv7 } from "@bus/core/adapter"
import { migrate } from "@bus/postgres-notify"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { Redis } from "ioredis"
import type pg from "pg"
import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { CpuMeter, type CpuSample } from "../../harness/cpu.js"
import type { BenchEnv } from "../../harness/env.js"
import { makePool } from "../../harness/pg.js"
import { runOpenLoop } from "../../harness/schedule.js"
import type { ArmSummary, BlockMeasurement, TransportId } from "../../harness/types.js"
import { sleep } from "../../targets/pipe.js"
import { openSdkBus, type SdkBus } from "../../targets/sdk.js"
import type { Scenario } from "../context.js"

/**
 * 8. The relay (issue 12): how fast the SDK's relay drains a backlog someone else wrote,
 * whether a quiet tenant waits behind it, and what the broker path costs Postgres.
 *
 * Backlog drain, per broker and backlog size N: N events of one address are bulk-loaded
 * into the outbox with plain SQL from outside the SDK (`INSERT … SELECT generate_series`,
 * the way an import or a backfill arrives, leaving the table's statistics stale), plus one
 * event of a quiet tenant in the same relay partition. Then a bus with the relay starts and
 * the harness counts, on the broker itself (Redis `XLEN`; JetStream message counts),
 * how many events arrived over time. While the backlog drains, a second quiet event is
 * committed (plain SQL again, so no in-process wake-up helps it) and its commit → broker
 * time is taken: the relay's fairness round, not the log order, must bring it.
 *
 * Postgres CPU per event: the same rows at the same fixed rate, once as the producer's
 * transaction alone (BEGIN, the INSERT the SDK's append does, without NOTIFY, COMMIT; no
 * relay), once through the broker path (`bus.publish` in the producer's transaction and the
 * relay forwarding it), each into a small outbox of its own.
 */

const schemaOf = (t: TransportId, what: string) => `bench_relay_${what}_${t.replace("-", "_")}`
/** The relay's owner name is fixed per schema: a bus opened after the previous block's closed one takes every partition at once instead of sharing with a departed owner until its membership runs out. */
const ownerOf = (t: TransportId, what: string) => `bench-relay-${what}-${t}`

const busy = "bulk"
const payloadPad = "x".repeat(216) // data ≈ 256 B as jsonb text with its other keys

/** Counts, on the broker, events of some tenants on one channel. */
interface BrokerCounter {
  /** Called before anything is sent to `channel` (a broker may count from here on). */
  baseline(channel: string): Promise<void>
  /** Events stored per tenant; the first tenant may be counted as "everything else on the broker since the baseline". */
  counts(channel: string, tenants: readonly string[]): Promise<number[]>
  close(): Promise<void>
}

const redisCounter = async (env: BenchEnv): Promise<BrokerCounter> => {
  const r = new Redis(env.redis?.url as string, { connectionName: "bench-relay-counter" })
  r.on("error", () => undefined)
  return {
    baseline: async () => undefined,
    counts: async (channel, tenants) => {
      const p = r.pipeline()
      for (const tenant of tenants) p.xlen(`bench:{${tenant}}:${channel}`)
      const res = (await p.exec()) ?? []
      return res.map(([error, n]) => (error === null ? Number(n) : 0))
    },
    close: async () => {
      r.disconnect()
    },
  }
}

const natsCounter = async (env: BenchEnv): Promise<BrokerCounter> => {
  const nc = await connect({ servers: env.nats?.url as string, name: "bench-relay-counter" })
  const jsm = await jetstreamManager(nc)
  // Per-subject counts (`subjects_filter`) make the server walk its subject state on every
  // call, which at this polling rate slowed JetStream itself as the stream grew. So the first
  // tenant (the backlog) is counted as the stream's message count since the baseline, less
  // the other tenants, which are single events looked up by subject (an index lookup).
  const total = async () => {
    try {
      return (await jsm.streams.info("BENCH")).state.messages
    } catch {
      return 0 // the stream is created by the transport when a bus starts
    }
  }
  const bases = new Map<string, number>()
  const found = new Map<string, number>()
  return {
    baseline: async (channel) => {
      bases.set(channel, await total())
    },
    counts: async (channel, tenants) => {
      const [first, ...others] = tenants
      const rest: number[] = []
      for (const t of others) {
        const key = `bench.${t}.${channel}`
        if (!found.has(key)) {
          const last = await jsm.streams
            .getMessage("BENCH", { last_by_subj: key })
            .then((m) => (m === null ? 0 : 1))
            .catch(() => 0)
          if (last > 0) found.set(key, 1)
        }
        rest.push(found.get(key) ?? 0)
      }
      if (first === undefined) return []
      const all = (await total()) - (bases.get(channel) ?? 0)
      return [Math.max(0, all - rest.reduce((a, b) => a + b, 0)), ...rest]
    },
    close: async () => {
      await nc.close()
    },
  }
}

const counterFor = (t: TransportId, env: BenchEnv) => (t === "nats" ? natsCounter(env) : redisCounter(env))

/** Quiet tenants whose address, on `channel`, is in `partition`. */
const quietTenants = async (
  helper: SdkBus,
  channel: string,
  partition: number,
  count: number,
): Promise<string[]> => {
  const store = helper.store
  if (store === undefined) throw new Error("no Postgres store")
  const out: string[] = []
  for (let i = 0; out.length < count && i < 10_000; i++) {
    const address: Address = { tenant: `quiet-${i}`, channel }
    const p = (await helper.bus.runtime.runPromise(store.relay.partitionOf(address) as never)) as number
    if (p === partition) out.push(address.tenant)
  }
  if (out.length < count) throw new Error(`no quiet tenant found in relay partition ${partition}`)
  return out
}

const bulkLoad = (schema: string, tenant: string, channel: string, n: number) =>
  `INSERT INTO ${schema}.outbox (id, tenant, channel, type, data, headers, event_time)
   SELECT gen_random_uuid(), '${tenant}', '${channel}', 'bulk.row',
          jsonb_build_object('i', g, 'p', '${payloadPad}'), '{}'::jsonb, now()
   FROM generate_series(1, ${n}) g`

const oneRow = (schema: string, tenant: string, channel: string) =>
  `INSERT INTO ${schema}.outbox (id, tenant, channel, type, data, headers, event_time)
   VALUES (gen_random_uuid(), '${tenant}', '${channel}', 'quiet.row',
           jsonb_build_object('i', 0, 'p', '${payloadPad}'), '{}'::jsonb, now())`

/** The SDK append's INSERT without its pg_notify: what the producer's transaction costs alone. */
const insertAlone = (schema: string) =>
  `INSERT INTO ${schema}.outbox (id, tenant, channel, type, data, headers, event_time)
   SELECT (e.v->>'id')::uuid, e.v->>'tenant', e.v->>'channel', e.v->>'type',
          e.v->'data', e.v->'headers', (e.v->>'time')::timestamptz
   FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS e(v, n)
   ORDER BY e.n
   ON CONFLICT (id) DO NOTHING`

const cpuFigures = (from: CpuSample, to: CpuSample, events: number): Record<string, number> => {
  const d = CpuMeter.delta(from, to)
  const m: Record<string, number> = {
    cpuUsPerEvent: events > 0 ? (d.processMs * 1000) / events : Number.NaN,
  }
  for (const [server, ms] of Object.entries(d.serversMs))
    if (ms !== undefined && events > 0) m[`cpuServerUsPerEvent.${server}`] = (ms * 1000) / events
  return m
}

export const relay: Scenario = {
  id: "relay",
  title: "The relay: backlog drain, fairness, Postgres cost",
  run: async (ctx) => {
    const p = ctx.profile.relay
    const brokers = ctx.transports.filter((t): t is "nats" | "redis-streams" =>
      ["nats", "redis-streams"].includes(t),
    )
    const arms: Arm[] = []
    const admin = makePool({ connectionString: ctx.env.pgUrl, application_name: "bench-relay-admin", max: 4 })
    const helpers = new Map<TransportId, Promise<SdkBus>>()
    const helperOf = (t: TransportId) => {
      let h = helpers.get(t)
      if (h === undefined) {
        // A bus without relay, only for the store's partitionOf (the same function the relay uses).
        h = openSdkBus({
          transport: t,
          env: ctx.env,
          schema: schemaOf(t, "drain"),
          listen: false,
          relay: false,
        })
        helpers.set(t, h)
      }
      return h
    }
    const counters = new Map<TransportId, Promise<BrokerCounter>>()
    const counterOf = (t: TransportId) => {
      let c = counters.get(t)
      if (c === undefined) {
        c = counterFor(t, ctx.env)
        counters.set(t, c)
      }
      return c
    }

    for (const t of brokers) {
      const reason = ctx.reason(t)
      for (const n of p.sizes) {
        arms.push({
          id: `${t}|drain|n=${n}`,
          label: `${t} (SDK relay): drain a ${n.toLocaleString("en")}-event backlog`,
          transport: t,
          variant: "drain",
          params: { pipe: t, backlog: n },
          ...(reason ? { unavailable: reason } : {}),
          setup: async () => {
            await helperOf(t)
            await counterOf(t)
          },
          run: async (_b, status): Promise<BlockMeasurement> => {
            const helper = await helperOf(t)
            const counter = await counterOf(t)
            const schema = schemaOf(t, "drain")
            const channel = ctx.channel("relay")
            const partition = (await helper.bus.runtime.runPromise(
              helper.store?.relay.partitionOf({ tenant: busy, channel }) as never,
            )) as number
            const [quietA, quietB] = (await quietTenants(helper, channel, partition, 2)) as [string, string]
            status(`bulk-loading ${n} events`)
            const load0 = performance.now()
            await admin.query(bulkLoad(schema, busy, channel, n))
            await admin.query(oneRow(schema, quietA, channel))
            const loadMs = performance.now() - load0
            const tenants = [busy, quietA, quietB]
            await counter.baseline(channel)
            status("starting the bus and its relay")
            const open0 = performance.now()
            const sdk = await openSdkBus({
              transport: t,
              env: ctx.env,
              schema,
              notify: "none",
              listen: false,
              relay: { owner: ownerOf(t, "drain") },
            })
            const started = performance.now()
            const cpu0 = ctx.cpu.sample()
            try {
              const samples: Array<{ at: number; busy: number }> = []
              let quietAAt = Number.NaN
              let busyAtQuietA = Number.NaN
              let quietBCommitted = Number.NaN
              let quietBAt = Number.NaN
              let busyAtQuietB = Number.NaN
              let quietBSent = false
              let busyAtQuietBCommit = Number.NaN
              let firstBusyAt = Number.NaN
              let quietBSend: Promise<unknown> | undefined
              const deadline = started + p.drainTimeoutMs
              let last = [0, 0, 0]
              for (;;) {
                const now = performance.now()
                last = await counter.counts(channel, tenants)
                const at = performance.now()
                const [b = 0, qa = 0, qb = 0] = last
                samples.push({ at, busy: b })
                if (qa > 0 && Number.isNaN(quietAAt)) {
                  quietAAt = at
                  busyAtQuietA = b
                }
                if (qb > 0 && Number.isNaN(quietBAt) && !Number.isNaN(quietBCommitted)) {
                  quietBAt = at
                  busyAtQuietB = b
                }
                if (b > 0 && Number.isNaN(firstBusyAt)) firstBusyAt = at
                // The second quiet event is committed once a quarter of the backlog is out, or
                // 3 s into the drain if that comes first (a slow relay): the relay is then busy
                // draining, well before the backlog is gone.
                if (!quietBSent && (b >= n / 4 || at - firstBusyAt >= 3_000)) {
                  quietBSent = true
                  busyAtQuietBCommit = b
                  quietBSend = admin.query(oneRow(schema, quietB, channel)).then(() => {
                    quietBCommitted = performance.now()
                  })
                }
                if (b >= n && qa > 0 && qb > 0) break
                if (at > deadline) break
                status(`${b}/${n} forwarded${qa > 0 ? ", quiet A out" : ""}${qb > 0 ? ", quiet B out" : ""}`)
                await sleep(Math.max(0, 10 - (performance.now() - now)))
              }
              await quietBSend
              const cpu1 = ctx.cpu.sample()
              const [forwarded = 0] = last
              const first = samples.find((s) => s.busy > 0)
              const doneAt = samples.find((s) => s.busy >= n)?.at ?? Number.NaN
              // Steady rate: between a tenth and nine tenths of the backlog, so the bus's start and the tail do not count.
              const s10 = samples.find((s) => s.busy >= n * 0.1)
              // A backlog that did not drain in time: its rate up to the last count taken.
              const s90 =
                samples.find((s) => s.busy >= n * 0.9) ??
                samples.findLast((s) => s10 !== undefined && s.busy > s10.busy)
              const steady =
                s10 !== undefined && s90 !== undefined && s90.at > s10.at
                  ? ((s90.busy - s10.busy) * 1000) / (s90.at - s10.at)
                  : Number.NaN
              const drainMs = doneAt - started
              const metrics: Record<string, number> = {
                backlog: n,
                forwarded,
                forwardedPerSec: steady,
                drainPerSec: Number.isFinite(drainMs)
                  ? (n * 1000) / drainMs
                  : (forwarded * 1000) / (performance.now() - started),
                drainMs,
                firstForwardMs: first !== undefined ? first.at - started : Number.NaN,
                openMs: started - open0,
                loadMs,
                quietPreloadedMs: quietAAt - started,
                busyBeforeQuietPreloaded: busyAtQuietA,
                quietDuringDrainMs: quietBAt - quietBCommitted,
                busyAtQuietDuringDrain: busyAtQuietB,
                busyAtQuietCommit: busyAtQuietBCommit,
                ...cpuFigures(cpu0, cpu1, forwarded),
              }
              const flags: string[] = []
              if (forwarded < n) flags.push("backlog-not-drained")
              if (Number.isNaN(quietAAt) || Number.isNaN(quietBAt)) flags.push("quiet-event-not-forwarded")
              return { metrics, flags }
            } finally {
              await sdk.close()
            }
          },
          teardown: async () => {
            // Drop this arm's rows so later blocks (and runs) start from a small table again.
            await admin.query(`TRUNCATE ${schemaOf(t, "drain")}.outbox`).catch(() => undefined)
          },
        })
      }
    }

    // Postgres CPU per event: the producer's INSERT alone, and the broker path, at one rate.
    const insertSchema = "bench_relay_insert"
    let producer: pg.Pool | undefined
    // Postgres's own background (checkpointer, autovacuum, statistics) over a second with
    // nothing of ours running: subtracted from a block's window, so the per-event figures
    // compare the work of the events, not how long each window happened to last on a busy machine.
    const idlePgMsPerMs = async (): Promise<number> => {
      const a = ctx.cpu.sample()
      await sleep(1_000)
      const d = CpuMeter.delta(a, ctx.cpu.sample())
      return (d.serversMs.postgres ?? Number.NaN) / d.wallMs
    }
    // The lower of the idle rates before and after the block: a background burst in one of
    // the two seconds (autovacuum waking up) is not taken for the steady background.
    const withNet = (m: BlockMeasurement, before: number, after: number): BlockMeasurement => {
      const idle = Math.min(before, after)
      const committed = m.metrics.committed ?? 0
      const pgMs = ((m.metrics.pgUsPerEvent ?? Number.NaN) * committed) / 1000
      const windowMs = m.metrics.windowMs ?? Number.NaN
      return {
        ...m,
        metrics: {
          ...m.metrics,
          pgIdleMsPerSec: idle * 1000,
          pgUsPerEventNet:
            committed > 0 ? (Math.max(0, pgMs - idle * windowMs) * 1000) / committed : Number.NaN,
        },
      }
    }
    const cpuBlock = async (
      status: (text: string) => void,
      send: (seq: number) => Promise<void>,
      settle: (committed: number) => Promise<number>,
    ): Promise<BlockMeasurement> => {
      const cpu0 = ctx.cpu.sample()
      const load = await runOpenLoop({
        ratePerSec: p.cpuRate,
        durationMs: p.cpuBlockMs,
        warmupMs: 0,
        maxInFlight: Math.max(64, p.cpuRate),
        send: (seq) => send(seq),
        onTick: () => status(`${p.cpuRate}/s`),
        settleMs: 10_000,
      })
      const forwarded = await settle(load.committed)
      const cpu1 = ctx.cpu.sample()
      const d = CpuMeter.delta(cpu0, cpu1)
      const pgMs = d.serversMs.postgres
      const metrics: Record<string, number> = {
        rate: p.cpuRate,
        committed: load.committed,
        forwarded,
        windowMs: d.wallMs,
        pgUsPerEvent: pgMs !== undefined && load.committed > 0 ? (pgMs * 1000) / load.committed : Number.NaN,
        ...cpuFigures(cpu0, cpu1, load.committed),
      }
      const flags: string[] = []
      if (load.errors > 0) flags.push("send-errors")
      if (load.skipped > 0) flags.push("rate-not-met")
      if (forwarded < load.committed) flags.push("not-forwarded")
      return { metrics, flags, ...(load.firstError ? { notes: [load.firstError] } : {}) }
    }
    const pgReason = ctx.reason("postgres-notify") ?? ctx.serverReason("postgres-notify")
    if (brokers.length > 0)
      arms.push({
        id: `insert-alone|rate=${p.cpuRate}`,
        label: `producer INSERT alone (no NOTIFY, no relay) @${p.cpuRate}/s`,
        transport: "postgres",
        variant: "insert-alone",
        params: { pipe: "insert-alone", rate: p.cpuRate },
        ...(pgReason ? { unavailable: pgReason } : {}),
        setup: async () => {
          await migrate({ connectionString: ctx.env.pgUrl, schema: insertSchema })
          producer = makePool({
            connectionString: ctx.env.pgUrl,
            application_name: "bench-producer",
            max: 16,
          })
        },
        run: async (_b, status) => {
          const channel = ctx.channel("relay-cpu")
          const sql = insertAlone(insertSchema)
          const idle = await idlePgMsPerMs()
          const m = await cpuBlock(
            status,
            async (seq) => {
              const rows = JSON.stringify([
                {
                  id: uuidv7(),
                  tenant: "bench",
                  channel,
                  type: "bench.event",
                  data: { s: seq, t: performance.now(), p: payloadPad },
                  headers: {},
                  time: new Date().toISOString(),
                },
              ])
              const c = await (producer as pg.Pool).connect()
              try {
                await c.query("BEGIN")
                await c.query(sql, [rows])
                await c.query("COMMIT")
              } catch (error) {
                await c.query("ROLLBACK").catch(() => undefined)
                throw error
              } finally {
                c.release()
              }
            },
            async (committed) => committed,
          )
          return withNet(m, idle, await idlePgMsPerMs())
        },
        teardown: async () => {
          await admin.query(`TRUNCATE ${insertSchema}.outbox`).catch(() => undefined)
          await producer?.end().catch(() => undefined)
        },
      })
    for (const t of brokers) {
      const reason = ctx.reason(t)
      let bus: SdkBus | undefined
      arms.push({
        id: `${t}|broker-path|rate=${p.cpuRate}`,
        label: `${t} broker path (SDK publish + relay) @${p.cpuRate}/s`,
        transport: t,
        variant: "broker-path",
        params: { pipe: t, rate: p.cpuRate },
        ...(reason ? { unavailable: reason } : {}),
        setup: async () => {
          await counterOf(t)
        },
        run: async (_b, status) => {
          const counter = await counterOf(t)
          const idle = await idlePgMsPerMs()
          // A bus per block, so its relay's idle polls do not count in the other arms' Postgres CPU.
          bus = await openSdkBus({
            transport: t,
            env: ctx.env,
            schema: schemaOf(t, "path"),
            notify: "none",
            listen: false,
            relay: { owner: ownerOf(t, "path") },
          })
          const sdk = bus
          const channel = ctx.channel("relay-cpu")
          await counter.baseline(channel)
          let m: BlockMeasurement
          try {
            m = await cpuBlock(
              status,
              (seq) =>
                sdk.publish([
                  {
                    tenant: "bench",
                    channel,
                    type: "bench.event",
                    data: { s: seq, t: performance.now(), p: payloadPad },
                  },
                ]),
              async (committed) => {
                // The window ends when the relay has forwarded every committed event.
                const until = performance.now() + 10_000
                for (;;) {
                  const [n = 0] = await counter.counts(channel, ["bench"])
                  if (n >= committed || performance.now() > until) return n
                  status(`relay: ${n}/${committed} forwarded`)
                  await sleep(10)
                }
              },
            )
          } finally {
            await sdk.close()
            bus = undefined
          }
          return withNet(m, idle, await idlePgMsPerMs())
        },
        teardown: async () => {
          await bus?.close()
          await admin.query(`TRUNCATE ${schemaOf(t, "path")}.outbox`).catch(() => undefined)
        },
      })
    }

    // The CPU comparison first: with one block per arm it then runs on a database no bulk
    // load has just stirred up (autovacuum, checkpoints), which would count in its window.
    const ordered = [
      ...arms.filter((a) => a.variant !== "drain"),
      ...arms.filter((a) => a.variant === "drain"),
    ]
    let result: Awaited<ReturnType<typeof runInterleaved>>
    try {
      result = await runInterleaved(ordered, {
        blocks: p.blocks,
        warmupBlocks: 0,
        progress: ctx.progress,
        scenario: "relay",
        aborted: ctx.aborted,
      })
    } finally {
      for (const h of helpers.values()) await (await h.catch(() => undefined))?.close()
      for (const c of counters.values()) await (await c.catch(() => undefined))?.close()
      await admin.end().catch(() => undefined)
    }
    return {
      id: "relay",
      title: relay.title,
      method: [
        `Backlog drain: per broker and backlog size N (${p.sizes.map((s) => s.toLocaleString("en")).join(", ")}), N events (data ≈ 256 B) of one address are bulk-loaded into the outbox with plain SQL from outside the SDK (\`INSERT … SELECT generate_series\`, no ANALYZE afterwards), plus one event of a quiet tenant whose address is in the same relay partition (\`store.relay.partitionOf\`). Then a bus with the in-process relay starts (default relay options) and the harness counts the events on the broker itself every ~10 ms (Redis \`XLEN\`; JetStream: the stream's message count since the block began, the quiet events looked up by subject; only this block's relay writes to the stream meanwhile).`,
        "Forwarding rate: events that reached the broker between 10 % and 90 % of the backlog divided by the time between (the bus's start and the tail excluded); the drain time runs from the bus being open to the last event on the broker. Flat in backlog size: the rates of the sizes stay within ±20 % of their median.",
        "Quiet events: the preloaded one is the last row in log order; its wait is from the bus being open to its arrival on the broker. A second one is committed (plain SQL, so no in-process wake-up) when a quarter of the backlog is out, or 3 s after the first backlog event reached the broker if that comes first; its wait is from its COMMIT returning to its arrival on the broker (±10 ms polling).",
        `Postgres CPU per event: the whole Postgres process tree's CPU time (\`/proc\`, clock ticks of 10 ms) over the block divided by events. Drain: over the drain, per forwarded event. INSERT alone vs broker path: ${p.cpuRate} events/s open loop for ${p.cpuBlockMs / 1000} s, one event per transaction, the same row; INSERT alone is BEGIN, the SDK append's INSERT without pg_notify, COMMIT, into an outbox no relay reads; the broker path is \`bus.publish\` in the producer's transaction (\`notify: "none"\`) with the relay forwarding, its window ending when the broker holds every committed event. Postgres's idle background, measured over 1 s before and 1 s after each block with nothing of ours running (the lower of the two), is subtracted over the window ("net"); the relay's own idle polling stays in the broker path's figure. The target compares the net figures.`,
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
      derived: analyseRelay(result.arms),
    }
  },
}

/** The issue-12 figures of this scenario: rate at the largest backlog, flatness, quiet waits, CPU ratio. */
export const analyseRelay = (arms: readonly ArmSummary[]) => {
  const med = (a: ArmSummary | undefined, k: string) => a?.metrics[k]?.median ?? Number.NaN
  const ok = arms.filter((a) => a.status === "ok")
  const insert = ok.find((a) => a.variant === "insert-alone")
  const insertUs = med(insert, "pgUsPerEventNet")
  const brokers: Record<string, unknown> = {}
  for (const t of [
    ...new Set(ok.filter((a) => a.variant !== "insert-alone").map((a) => String(a.params.pipe))),
  ]) {
    const drains = ok
      .filter((a) => a.variant === "drain" && a.params.pipe === t)
      .sort((a, b) => Number(a.params.backlog) - Number(b.params.backlog))
    const rates = drains.map((a) => med(a, "forwardedPerSec")).filter(Number.isFinite)
    const sorted = [...rates].sort((a, b) => a - b)
    const mid = sorted.length > 0 ? (sorted[Math.floor((sorted.length - 1) / 2)] as number) : Number.NaN
    const largest = drains.at(-1)
    const path = ok.find((a) => a.variant === "broker-path" && a.params.pipe === t)
    const quietDuring = drains.map((a) => a.metrics.quietDuringDrainMs?.max ?? Number.NaN)
    const quietPre = drains.map((a) => a.metrics.quietPreloadedMs?.max ?? Number.NaN)
    brokers[t] = {
      rates: Object.fromEntries(drains.map((a) => [String(a.params.backlog), med(a, "forwardedPerSec")])),
      largestBacklog: largest === undefined ? null : Number(largest.params.backlog),
      rateAtLargest: med(largest, "forwardedPerSec"),
      // Largest deviation of a size's rate from the median of the sizes.
      flatness: rates.length > 1 ? Math.max(...rates.map((r) => Math.abs(r / mid - 1))) : Number.NaN,
      quietDuringDrainMaxMs: quietDuring.length > 0 ? Math.max(...quietDuring) : Number.NaN,
      quietPreloadedMaxMs: quietPre.length > 0 ? Math.max(...quietPre) : Number.NaN,
      drainPgUsPerEvent: med(largest, "cpuServerUsPerEvent.postgres"),
      // Net of Postgres's idle background (see `idlePgMsPerMs`); the gross figures are in the arms.
      pathPgUsPerEvent: med(path, "pgUsPerEventNet"),
      insertPgUsPerEvent: insertUs,
      cpuRatio: med(path, "pgUsPerEventNet") / insertUs,
      cpuRatioGross: med(path, "pgUsPerEvent") / med(insert, "pgUsPerEvent"),
    }
  }
  return { brokers }
}
