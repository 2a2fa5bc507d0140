import type { EventInput } from "@bus/core"
import { uuidv7 } from "@bus/core/adapter"
import { migrate, type PostgresOutboxService } from "@bus/postgres-notify"
import { addressChannel, encodePayload } from "@bus/postgres-notify/adapter"
import type pg from "pg"
import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { CpuMeter } from "../../harness/cpu.js"
import { withClient } from "../../harness/env.js"
import { makeClient, makePool } from "../../harness/pg.js"
import { runClosedLoop } from "../../harness/schedule.js"
import type { ArmSummary, BlockMeasurement, TransportId } from "../../harness/types.js"
import { tenant } from "../../targets/pipe.js"
import { openSdkBus, type SdkBus } from "../../targets/sdk.js"
import type { Scenario, ScenarioContext } from "../context.js"

/**
 * 3. The commit-lock knee. Every committing transaction that issued NOTIFY takes one
 * database-wide lock and holds it through its commit (so those commits cannot share a
 * WAL flush). C writers (closed loop, one connection each) commit transactions of
 * `eventsPerTx` events as fast as they can, with:
 *
 * - no NOTIFY: the outbox append alone (store `notify: "none"`, nobody woken);
 * - per-row trigger NOTIFY: a copy of the outbox table with an AFTER INSERT FOR EACH ROW
 *   trigger doing `pg_notify(chan, NEW.id)`, the naive way;
 * - coalesced NOTIFY: our append (`notify: "addresses"`), one NOTIFY per transaction;
 * - after-commit wake: `notify: "none"` and `store.wake()` after COMMIT, coalesced
 *   single-flight by the harness (at most one wake statement in flight);
 * - broker via relay: `notify: "none"` and the relay forwarding to the broker.
 *
 * Each NOTIFY mode has a LISTEN connection consuming its notifications, as in production.
 */

type Mode = "no-notify" | "trigger-per-row" | "coalesced" | "after-commit" | "broker-relay" | "sdk-coalesced"

const modeLabels: Record<Mode, string> = {
  "no-notify": "no NOTIFY",
  "trigger-per-row": "per-row trigger NOTIFY (naive)",
  coalesced: "coalesced NOTIFY (ours)",
  "after-commit": "after-commit wake",
  "broker-relay": "broker via relay",
  "sdk-coalesced": "SDK publish (coalesced)",
}

/** Channels the writers spread their transactions over (one per transaction, round robin). */
const channelCount = 16

interface ModeResources {
  /** One transaction of the mode on `client`. */
  tx(client: pg.PoolClient, seq: number): Promise<void>
  notifications(): number
  backlog?(): Promise<number>
  /** Cumulative calls and execution time of the relay's partition read statements (pg_stat_statements). */
  readStats?(): Promise<{ calls: number; totalMs: number }>
  close(): Promise<void>
}

const channelOf = (seq: number) => `knee-${seq % channelCount}`

const events = (n: number, seq: number): EventInput[] =>
  Array.from({ length: n }, (_, i) => ({
    tenant,
    channel: channelOf(seq),
    type: "bench.knee",
    data: { s: seq, i, p: "x".repeat(200) },
  }))

const rowsJson = (n: number, seq: number): string =>
  JSON.stringify(events(n, seq).map((e) => ({ ...e, id: uuidv7() })))

const insertSql = (table: string) =>
  `INSERT INTO ${table} (id, tenant, channel, type, data, headers, event_time)
   SELECT (e->>'id')::uuid, e->>'tenant', e->>'channel', e->>'type', e->'data', '{}'::jsonb, now()
   FROM jsonb_array_elements($1::jsonb) e`

const listenTo = async (url: string, channels: readonly string[]) => {
  const c = makeClient({ connectionString: url, application_name: "bench-knee-listener" })
  c.on("error", () => undefined)
  await c.connect()
  let count = 0
  c.on("notification", () => {
    count++
  })
  for (const channel of channels) await c.query(`LISTEN ${channel}`)
  return { count: () => count, close: () => c.end().catch(() => undefined) }
}

const inTx = async (client: pg.PoolClient, work: () => Promise<unknown>) => {
  await client.query("BEGIN")
  try {
    await work()
    await client.query("COMMIT")
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined)
    throw error
  }
}

const addresses = Array.from({ length: channelCount }, (_, i) => ({ tenant, channel: `knee-${i}` }))

const setupMode = async (
  ctx: ScenarioContext,
  mode: Mode,
  eventsPerTx: number,
  broker: TransportId | undefined,
): Promise<ModeResources> => {
  const url = ctx.env.pgUrl
  await migrate({ connectionString: url, schema: "bench_knee" })
  const ourChannels = addresses.map((a) => addressChannel("bench_knee", a))
  if (mode === "trigger-per-row") {
    await withClient(url, (c) =>
      c.query(`
        CREATE SCHEMA IF NOT EXISTS bench_naive;
        CREATE TABLE IF NOT EXISTS bench_naive.outbox (LIKE bench_knee.outbox INCLUDING ALL);
        CREATE OR REPLACE FUNCTION bench_naive.notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('bench_naive', NEW.id::text); RETURN NEW; END $$;
        DROP TRIGGER IF EXISTS notify_row ON bench_naive.outbox;
        CREATE TRIGGER notify_row AFTER INSERT ON bench_naive.outbox
          FOR EACH ROW EXECUTE FUNCTION bench_naive.notify_row();`),
    )
    const listener = await listenTo(url, ["bench_naive"])
    const sql = insertSql("bench_naive.outbox")
    return {
      tx: (client, seq) => inTx(client, () => client.query(sql, [rowsJson(eventsPerTx, seq)])),
      notifications: listener.count,
      close: listener.close,
    }
  }
  if (mode === "no-notify") {
    const sql = insertSql("bench_knee.outbox")
    return {
      tx: (client, seq) => inTx(client, () => client.query(sql, [rowsJson(eventsPerTx, seq)])),
      notifications: () => 0,
      close: async () => undefined,
    }
  }
  if (mode === "coalesced") {
    // Our append's shape: the batch insert and one pg_notify per address, one statement.
    const sql = `WITH ins AS (${insertSql("bench_knee.outbox")} RETURNING 1)
      SELECT (SELECT count(*) FROM ins)::int AS inserted, pg_notify($2, $3)`
    const listener = await listenTo(url, ourChannels)
    return {
      tx: (client, seq) =>
        inTx(client, () => {
          const a = addresses[seq % channelCount] as { tenant: string; channel: string }
          return client.query(sql, [
            rowsJson(eventsPerTx, seq),
            addressChannel("bench_knee", a),
            encodePayload(a),
          ])
        }),
      notifications: listener.count,
      close: listener.close,
    }
  }
  if (mode === "after-commit") {
    const sql = insertSql("bench_knee.outbox")
    const listener = await listenTo(url, ourChannels)
    const notifier = makeClient({ connectionString: url, application_name: "bench-knee-waker" })
    notifier.on("error", () => undefined)
    await notifier.connect()
    // Single flight: while one wake statement runs, the addresses committed meanwhile wait
    // and go out together in the next one (one short NOTIFY transaction at a time).
    const pending = new Set<number>()
    let running: Promise<void> | undefined
    const flush = async () => {
      while (pending.size > 0) {
        const batch = [...pending]
        pending.clear()
        const pairs = batch.map((i) => {
          const a = addresses[i] as { tenant: string; channel: string }
          return [addressChannel("bench_knee", a), encodePayload(a)]
        })
        await notifier
          .query("SELECT count(pg_notify(p->>0, p->>1)) FROM jsonb_array_elements($1::jsonb) p", [
            JSON.stringify(pairs),
          ])
          .catch(() => undefined)
      }
      running = undefined
    }
    return {
      tx: async (client, seq) => {
        await inTx(client, () => client.query(sql, [rowsJson(eventsPerTx, seq)]))
        pending.add(seq % channelCount)
        running ??= flush()
      },
      notifications: listener.count,
      close: async () => {
        await running
        await notifier.end().catch(() => undefined)
        await listener.close()
      },
    }
  }
  if (mode === "broker-relay") {
    if (broker === undefined) throw new Error("no broker transport available")
    const sdk = await openSdkBus({
      transport: broker,
      env: ctx.env,
      schema: "bench_knee_broker",
      notify: "none",
      listen: false,
    })
    const store = sdk.store as PostgresOutboxService
    const sql = insertSql("bench_knee_broker.outbox")
    return {
      tx: (client, seq) => inTx(client, () => client.query(sql, [rowsJson(eventsPerTx, seq)])),
      notifications: () => 0,
      backlog: () => sdk.bus.runtime.runPromise(store.relay.backlog as never) as Promise<number>,
      // The relay's partition reads (steady and paging), found by their text: the only
      // statements that both filter on the partition and return the read snapshot (the
      // fairness rounds' address reads do not filter on the partition). pg_stat_statements
      // keeps the text of the first schema it saw them for, and this bus's relay is the only
      // one running here.
      readStats: () =>
        withClient(url, async (c) => {
          try {
            const r = await c.query(
              `SELECT coalesce(sum(calls), 0)::float8 AS calls, coalesce(sum(total_exec_time), 0)::float8 AS ms
                 FROM pg_stat_statements WHERE query LIKE '%relay_partition(%' AND query LIKE '%AS snapshot%'`,
            )
            return { calls: Number(r.rows[0]?.calls ?? 0), totalMs: Number(r.rows[0]?.ms ?? 0) }
          } catch {
            return { calls: Number.NaN, totalMs: Number.NaN }
          }
        }),
      close: () => sdk.close(),
    }
  }
  // sdk-coalesced: the real publish path, same table and NOTIFY as "coalesced".
  const sdk: SdkBus = await openSdkBus({
    transport: "postgres-notify",
    env: ctx.env,
    schema: "bench_knee",
    notify: "addresses",
    listen: false,
  })
  const listener = await listenTo(url, ourChannels)
  return {
    tx: (client, seq) => sdk.publish(events(eventsPerTx, seq), client),
    notifications: listener.count,
    close: async () => {
      await listener.close()
      await sdk.close()
    },
  }
}

export const kneeOf = (
  series: ReadonlyArray<{ c: number; commits: number }>,
  gain = 1.15,
): number | undefined => {
  for (let i = 1; i < series.length; i++) {
    const prev = series[i - 1] as { c: number; commits: number }
    const cur = series[i] as { c: number; commits: number }
    if (!(cur.commits >= prev.commits * gain)) return prev.c
  }
  return undefined
}

export const knee: Scenario = {
  id: "knee",
  title: "The commit-lock knee",
  run: async (ctx) => {
    const p = ctx.profile.knee
    const broker: TransportId | undefined = (["nats", "redis-streams"] as const).find(
      (t) => ctx.transports.includes(t) && ctx.reason(t) === undefined,
    )
    const pgServer = ctx.serverReason("postgres-notify")
    const modes: Mode[] = [
      "no-notify",
      "trigger-per-row",
      "coalesced",
      "after-commit",
      "broker-relay",
      "sdk-coalesced",
    ]
    const resources = new Map<Mode, Promise<ModeResources>>()
    const maxC = Math.max(...p.concurrency)
    let pool: pg.Pool | undefined
    const getPool = () => {
      if (pool === undefined) {
        pool = makePool({
          connectionString: ctx.env.pgUrl,
          application_name: "bench-knee-writer",
          max: maxC,
        })
        pool.on("error", () => undefined)
      }
      return pool
    }
    const modeOf = (mode: Mode) => {
      let r = resources.get(mode)
      if (r === undefined) {
        r = setupMode(ctx, mode, p.eventsPerTx, broker)
        resources.set(mode, r)
      }
      return r
    }
    const arms: Arm[] = []
    for (const mode of modes) {
      const unavailable =
        pgServer ??
        (mode === "broker-relay" && broker === undefined
          ? "no broker transport available (nats and redis-streams both unavailable or not selected)"
          : undefined) ??
        (mode === "sdk-coalesced" ? ctx.reason("postgres-notify") : undefined)
      for (const c of p.concurrency) {
        arms.push({
          id: `${mode}|c=${c}`,
          label: `${modeLabels[mode]}${mode === "broker-relay" && broker ? ` (${broker})` : ""} c=${c}`,
          transport: mode === "broker-relay" ? (broker ?? "nats") : "postgres",
          variant: mode,
          params: {
            mode,
            concurrency: c,
            eventsPerTx: p.eventsPerTx,
            ...(mode === "broker-relay" && broker ? { broker } : {}),
          },
          ...(unavailable !== undefined ? { unavailable } : {}),
          setup: async () => {
            await modeOf(mode)
          },
          run: async (_block, status): Promise<BlockMeasurement> => {
            const r = await modeOf(mode)
            const clients = await Promise.all(Array.from({ length: c }, () => getPool().connect()))
            try {
              if (r.backlog !== undefined) {
                // Start from an idle relay, so blocks do not inherit each other's backlog.
                const until = performance.now() + p.blockMs * 2.5
                while ((await r.backlog()) > 100 && performance.now() < until) {
                  status("waiting for the relay to drain")
                  await new Promise((resolve) => setTimeout(resolve, 100))
                }
              }
              const read0 = await r.readStats?.()
              const n0 = r.notifications()
              const backlog0 = r.backlog !== undefined ? await r.backlog() : 0
              const cpu0 = ctx.cpu.sample()
              const result = await runClosedLoop({
                concurrency: c,
                durationMs: p.blockMs,
                warmupMs: Math.min(ctx.profile.warmupMs, p.blockMs / 4),
                op: (w, seq) => r.tx(clients[w] as pg.PoolClient, seq),
                onTick: () => status(`${c} writers`),
              })
              const cpu1 = ctx.cpu.sample()
              const d = CpuMeter.delta(cpu0, cpu1)
              const lat = result.latency.summary()
              const commits = (result.measured * 1000) / result.windowMs
              const txs = result.total
              const metrics: Record<string, number> = {
                concurrency: c,
                commitsPerSec: commits,
                eventsPerSec: commits * p.eventsPerTx,
                p50: lat.p50,
                p90: lat.p90,
                p99: lat.p99,
                max: lat.max,
                notificationsReceived: r.notifications() - n0,
                errors: result.errors,
                cpuUsPerCommit: txs > 0 ? (d.processMs * 1000) / txs : Number.NaN,
              }
              const pgMs = d.serversMs.postgres
              if (pgMs !== undefined) metrics["cpuServerUsPerCommit.postgres"] = (pgMs * 1000) / txs
              if (r.backlog !== undefined) {
                const backlog1 = await r.backlog()
                metrics.relayBacklog = backlog1
                const inserted = txs * p.eventsPerTx
                metrics.relayForwardedPerSec = ((inserted - (backlog1 - backlog0)) * 1000) / p.blockMs
                const read1 = await r.readStats?.()
                if (read0 !== undefined && read1 !== undefined && read1.calls > read0.calls) {
                  metrics.relayReads = read1.calls - read0.calls
                  metrics.relayReadMeanMs = (read1.totalMs - read0.totalMs) / (read1.calls - read0.calls)
                }
              }
              const flags: string[] = []
              if (result.errors > 0) flags.push("send-errors")
              // The relay falls behind when its backlog grew by more than a tenth of a second's events.
              if (
                metrics.relayBacklog !== undefined &&
                metrics.relayBacklog - backlog0 > commits * p.eventsPerTx * 0.1
              )
                flags.push("relay-backlog-growing")
              return { metrics, flags, ...(result.firstError ? { notes: [result.firstError] } : {}) }
            } finally {
              for (const client of clients) client.release()
            }
          },
        })
      }
    }
    let result: Awaited<ReturnType<typeof runInterleaved>>
    try {
      result = await runInterleaved(arms, {
        blocks: p.blocks,
        warmupBlocks: p.warmupBlocks,
        progress: ctx.progress,
        scenario: "knee",
        aborted: ctx.aborted,
      })
    } finally {
      for (const r of resources.values()) await (await r.catch(() => undefined))?.close()
      await pool?.end().catch(() => undefined)
    }
    const derived = analyseKnee(result.arms, modes, p.concurrency)
    return {
      id: "knee",
      title: knee.title,
      method: [
        `Closed loop: C = ${p.concurrency.join(", ")} writers, each on its own connection, committing transactions of ${p.eventsPerTx} events (≈250 B of data each) back to back, spread round robin over ${channelCount} channels of one tenant. Concurrency is the variable, so this is deliberately closed-loop: the latency here is the transaction's service time (BEGIN → COMMIT returned), not open-loop latency.`,
        "To measure the database rather than the client, the first five modes send the same plain SQL from the pg driver (a jsonb batch INSERT into a table with the outbox's columns and indexes), differing only in how they NOTIFY: no NOTIFY; per-row trigger NOTIFY (a copy of the outbox table with an AFTER INSERT FOR EACH ROW trigger doing `pg_notify(chan, NEW.id)`, the naive way); coalesced NOTIFY (our append's shape: the insert and one `pg_notify(address channel, payload)` in one statement, one notification per transaction); after-commit wake (no NOTIFY in the transaction; after COMMIT, one `pg_notify` statement of its own, single-flight, carrying every address committed meanwhile: the mode `notify: \"none\"` + `store.wake()` is for; the package exports `wake` but not the batching, so the harness does it); broker via relay (no NOTIFY; the SDK's relay forwards the rows to the broker in the same process).",
        'The sixth mode is the product itself: `bus.publish(tx, events)` with the default `notify: "addresses"`, into the same table as the coalesced mode; the difference to "coalesced NOTIFY" is the SDK\'s client-side cost.',
        "Every NOTIFY mode has a LISTEN connection consuming its notifications, as in production. Delivery to subscribers is not part of this scenario (see latency). For the broker mode, each block starts with the relay drained, and the relay's forwarding rate is reported.",
        "Knee: the smallest concurrency after which adding writers adds less than 15 % commits/s. The flip pays from the first concurrency, at or past the coalesced-NOTIFY knee, where the broker path commits ≥ 20 % more than coalesced NOTIFY at the same concurrency; only blocks in which the relay kept up count for the broker path, and without such blocks no NOTIFY stands in for it.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
      derived,
    }
  },
}

export const analyseKnee = (
  arms: readonly ArmSummary[],
  modes: readonly string[],
  concurrency: readonly number[],
) => {
  type Point = { c: number; commits: number; p99: number; sustained: boolean }
  const series: Record<string, Point[]> = {}
  const knees: Record<string, number | null> = {}
  for (const mode of modes) {
    const points = concurrency
      .map((c) => {
        const a = arms.find((x) => x.variant === mode && x.params.concurrency === c && x.status === "ok")
        return a === undefined
          ? undefined
          : {
              c,
              commits: a.metrics.commitsPerSec?.median ?? Number.NaN,
              p99: a.metrics.p99?.median ?? Number.NaN,
              sustained: a.saturatedBlocks === 0,
            }
      })
      .filter((x): x is Point => x !== undefined)
    if (points.length === 0) continue
    series[mode] = points
    knees[mode] = kneeOf(points) ?? null
  }
  // The broker path only counts where its relay kept up with the writers; a commit rate the
  // relay cannot forward is not a rate the broker path sustains end to end.
  // The flip pays where coalesced NOTIFY has stopped scaling (at or past its knee) while the
  // other path, at the same concurrency, still commits at least 20 % more.
  const coalescedKnee = knees.coalesced ?? null
  const findFlip = (reference: Point[] | undefined, against: string) => {
    if (reference === undefined || series.coalesced === undefined || coalescedKnee === null) return null
    for (const point of series.coalesced) {
      if (point.c < coalescedKnee) continue
      const other = reference.find((r) => r.c === point.c && r.sustained)
      if (other !== undefined && other.commits >= point.commits * 1.2) {
        return {
          concurrency: point.c,
          notifyingCommitsPerSec: point.commits,
          gain: other.commits / point.commits,
          against,
        }
      }
    }
    return null
  }
  const broker = series["broker-relay"]
  const relayKeptUp = broker === undefined ? null : broker.every((p) => p.sustained)
  const flip = findFlip(broker, "broker-relay") ?? findFlip(series["no-notify"], "no-notify")
  return { series, knees, flip, relayKeptUp }
}
