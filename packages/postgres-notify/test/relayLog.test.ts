import { type BusError, memoryOutbox, TransportFailure, TransportUnavailable } from "@bus/core"
import {
  type Envelope,
  memoryBroker,
  OutboxRelay,
  outboxLayer,
  type RelayLog,
  type RelayServices,
  relayBatch,
  runRelay,
  sendEach,
  Transport,
} from "@bus/core/adapter"
import { Effect, Fiber, Layer, References } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, migrations } from "../src/adapter.js"
import { migrate, type PostgresOutboxService } from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { run } from "./support/run.js"

/**
 * The log-shaped relay over the Postgres outbox (schema v4), driven by core's `runRelay`
 * into `memoryBroker()` (the in-memory broker with the real brokers' dedupe by id), and
 * checked from outside with plain SQL: what the broker holds, what the outbox's rows and
 * `relay_partitions` say.
 */

let db: TestDb
const closers: Array<() => Promise<void>> = []

const store = async (
  schema?: string,
  options: Partial<Parameters<typeof createPostgresOutboxStore>[0]> = {},
): Promise<{ s: PostgresOutboxService; schema: string }> => {
  const name = schema ?? (await db.freshSchema())
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: name,
    migrate: schema === undefined,
    listen: false,
    pollIntervalMs: 0,
    ...options,
  })
  closers.push(h.close)
  return { s: h.store, schema: name }
}

type Hook = (event: Envelope) => BusError | undefined

/** A memory broker behind a send hook, and a runtime holding it with the store. */
const broker = (s: PostgresOutboxService, hook: Hook = () => undefined, dead: Set<string> = new Set()) => {
  const brokerOutbox = memoryOutbox()
  const sends = new Map<string, number>()
  const transport = Layer.effect(
    Transport,
    Effect.gen(function* () {
      const inner = yield* Transport
      const send = (e: Envelope, meta?: Parameters<typeof inner.send>[1]) =>
        Effect.suspend(() => {
          sends.set(e.id, (sends.get(e.id) ?? 0) + 1)
          const error = hook(e)
          return error === undefined ? inner.send(e, meta) : Effect.fail(error)
        })
      return Transport.of({ ...inner, send, sendAll: sendEach(send) })
    }),
  ).pipe(Layer.provide(memoryBroker(brokerOutbox).layer))
  // Owners in `dead` act as a killed process: nothing they store, renew or release arrives.
  const alive = <A>(owner: string, effect: Effect.Effect<A, BusError>, fallback: A) =>
    Effect.suspend(() => (dead.has(owner) ? Effect.succeed(fallback) : effect))
  const relay: RelayLog = {
    ...s.relay,
    claim: (p, owner, leaseMs) =>
      s.relay.claim(p, owner, leaseMs).pipe(
        Effect.map((c) =>
          c === undefined
            ? undefined
            : {
                ...c,
                commit: (st) => alive(owner, c.commit(st), true),
                renew: alive(owner, c.renew, true),
              },
        ),
      ),
    release: (p, owner) => alive(owner, s.relay.release(p, owner), undefined),
    heartbeat: (owner, ms) => alive(owner, s.relay.heartbeat(owner, ms), 1),
  }
  const layer = Layer.merge(transport, outboxLayer({ ...s, relay }))
  const provide = <A, E>(self: Effect.Effect<A, E, RelayServices>) =>
    Effect.runPromise(
      Effect.provideService(Effect.provide(self, layer), References.MinimumLogLevel, "None") as Effect.Effect<
        A,
        E
      >,
    )
  return { brokerOutbox, sends, provide }
}

/** Runs `runRelay` until `stop()`. */
const startRelay = (b: ReturnType<typeof broker>, options: Parameters<typeof runRelay>[0]) => {
  let stop: () => Promise<void> = async () => {}
  const done = b.provide(
    Effect.gen(function* () {
      const f = yield* runRelay(options).pipe(Effect.forkChild)
      yield* Effect.callback<void>((resume) => {
        stop = async () => resume(Effect.void)
      })
      yield* Fiber.interrupt(f)
    }),
  )
  return {
    stop: async () => {
      await stop()
      await done
    },
  }
}

const relayedIds = (b: ReturnType<typeof broker>) => b.brokerOutbox.committed().map((e) => e.id)

const rows = async (sql: string, params: ReadonlyArray<unknown> = []) =>
  (await db.pool.query(sql, [...params])).rows as Array<Record<string, unknown>>

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const close of closers) await close()
  await db?.close()
})

describe("the relay reads the outbox as a log", () => {
  it("a partition is fresh until a relay stores a position for it (a broker found empty then lost nothing of it)", async () => {
    const { s } = await store()
    const b = broker(s)
    const claimOf = () => b.provide(OutboxRelay.use((st) => st.claim(0, "probe", 1_000)))
    const first = await claimOf()
    expect(first?.state.fresh).toBe(true)
    expect(await b.provide(first!.commit(first!.state))).toBe(true)
    await b.provide(OutboxRelay.use((st) => st.release(0, "probe")))
    expect((await claimOf())?.state.fresh).toBe(false)
  })

  it("forwards every committed row once, per address in order, across out-of-order commits, and never updates an outbox row", async () => {
    const { s, schema } = await store()
    const b = broker(s)
    // Transaction A takes the lower sequence numbers but commits after B.
    const slow = await db.pool.connect()
    const a = [event("acme", "orders", { i: 0 }), event("acme", "orders", { i: 1 })]
    await slow.query("BEGIN")
    await run(s.append(slow, a))
    const c = [event("acme", "orders", { i: 2 }), event("beta", "orders", { i: 0 })]
    await inTransaction(db.pool, (tx) => run(s.append(tx, c)))
    const first = await b.provide(relayBatch({ owner: "r" }))
    expect(first.forwarded).toBe(2)
    await slow.query("COMMIT")
    slow.release()
    const second = await b.provide(relayBatch({ owner: "r" }))
    expect(second.forwarded).toBe(2)
    expect(new Set(relayedIds(b))).toEqual(new Set([...a, ...c].map((e) => e.id)))
    expect(relayedIds(b)).toHaveLength(4)
    // Per transaction, the order holds on the broker.
    const acme = b.brokerOutbox.committed().filter((e) => e.tenant === "acme")
    expect(acme.map((e) => (e.data as { i: number }).i)).toEqual([2, 0, 1])
    // The relay stored positions; producers' rows were inserted and never touched again.
    const [stats] = await rows(
      "SELECT n_tup_upd::int AS upd FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'outbox'",
      [schema],
    )
    expect(stats?.upd).toBe(0)
    expect(await b.provide(OutboxRelay.use((st) => st.backlog))).toBe(0)
  })

  it("parks a row the broker refuses for good and moves on; a broker outage moves no position and parks nothing", async () => {
    const { s, schema } = await store()
    let down = false
    const poison = event("acme", "orders", { i: 1 })
    const b = broker(s, (e) =>
      down
        ? new TransportUnavailable({ transport: "broker", message: "connection refused" })
        : e.id === poison.id
          ? new TransportFailure({
              transport: "broker",
              retryable: false,
              message: "too large for the broker",
            })
          : undefined,
    )
    const list = [event("acme", "orders", { i: 0 }), poison, event("acme", "orders", { i: 2 })]
    await inTransaction(db.pool, (tx) => run(s.append(tx, list)))
    await b.provide(relayBatch({ owner: "r" }))
    expect(relayedIds(b)).toEqual([list[0]!.id, list[2]!.id])
    const letters = await rows(`SELECT event_id::text AS id, source, reason FROM "${schema}".dead_letters`)
    expect(letters).toEqual([
      { id: poison.id, source: "relay", reason: expect.stringContaining("too large") },
    ])

    down = true
    const positions = async () =>
      (await rows(`SELECT partition, position FROM "${schema}".relay_partitions ORDER BY partition`)).map(
        (r) => r.position,
      )
    const before = await positions()
    const later = [event("beta", "orders", { i: 0 }), event("acme", "orders", { i: 3 })]
    await inTransaction(db.pool, (tx) => run(s.append(tx, later)))
    const relay = startRelay(b, { owner: "r", maxIdleMs: 50 })
    await new Promise((r) => setTimeout(r, 1_000))
    expect(await positions()).toEqual(before)
    down = false
    await eventually(() => (relayedIds(b).length === 4 ? true : undefined), 10_000)
    await relay.stop()
    expect(await rows(`SELECT count(*)::int AS n FROM "${schema}".dead_letters`)).toEqual([{ n: 1 }])
  })
})

describe("wake-ups without the commit lock", () => {
  it("a relay wakes on its own process's append, and on another process's with relayWake notify, long before its poll", async () => {
    const { s, schema } = await store(undefined, { notify: "none" })
    // Another process: its own store (pool, listener) on the same outbox, producing only.
    const other = await store(schema, { notify: "none", relayWake: "notify" })
    const relayStore = await store(schema, { notify: "none", listen: true, watchRelay: true })
    void s
    const b = broker(relayStore.s)
    const relay = startRelay(b, { owner: "r", maxIdleMs: 10_000 })
    // Let the partitions' idle pauses grow past a second.
    await new Promise((r) => setTimeout(r, 2_500))
    const viaProcess = event("acme", "orders", { i: 0 })
    let start = Date.now()
    await inTransaction(db.pool, (tx) => run(relayStore.s.append(tx, [viaProcess])))
    await eventually(() => (relayedIds(b).includes(viaProcess.id) ? true : undefined), 15_000)
    const processMs = Date.now() - start
    const viaNotify = event("beta", "orders", { i: 0 })
    start = Date.now()
    await inTransaction(db.pool, (tx) => run(other.s.append(tx, [viaNotify])))
    await eventually(() => (relayedIds(b).includes(viaNotify.id) ? true : undefined), 15_000)
    const notifyMs = Date.now() - start
    await relay.stop()
    // The poll would have taken up to 10 s.
    expect(processMs).toBeLessThan(1_000)
    expect(notifyMs).toBeLessThan(1_000)
    console.info(
      `relay wake-up: same process ${processMs} ms, other process (relayWake notify) ${notifyMs} ms`,
    )
  })
})

describe("partitions", () => {
  it("the process computes an address's partition exactly as relay_partition() in the database", async () => {
    const { s, schema } = await store()
    const names: Array<[string, string]> = [
      ["a", "b"],
      ["acme", "orders"],
      ["x".repeat(64), "y".repeat(64)],
    ]
    for (let i = 0; i < 500; i++) names.push([`tenant-${i}`, `ch_${(i * 7919) % 1000}`])
    const fromDb = await rows(
      `SELECT "${schema}".relay_partition(t, c, $3) AS p FROM unnest($1::text[], $2::text[]) AS n(t, c)`,
      [names.map((n) => n[0]), names.map((n) => n[1]), s.relay.partitions],
    )
    const local = await Promise.all(
      names.map(([tenant, channel]) => run(s.relay.partitionOf({ tenant, channel }))),
    )
    expect(local).toEqual(fromDb.map((r) => r.p))
    expect(new Set(local).size).toBe(s.relay.partitions)
  })

  it("a relay that dies holding partitions loses them after its lease; another relay resumes from the stored positions", async () => {
    const { s, schema } = await store()
    const dead = new Set<string>()
    const b = broker(s, () => undefined, dead)
    const first = Array.from({ length: 40 }, (_, i) => event(`t${i % 8}`, "orders", { i }))
    await inTransaction(db.pool, (tx) => run(s.append(tx, first)))
    const a = startRelay(b, { owner: "a", leaseMs: 1_000, maxIdleMs: 50 })
    await eventually(() => (relayedIds(b).length === 40 ? true : undefined), 10_000)
    const held = await rows(`SELECT count(*)::int AS n FROM "${schema}".relay_partitions WHERE owner = 'a'`)
    expect(held).toEqual([{ n: s.relay.partitions }])
    // Killed: it stores, renews and releases nothing from now on.
    dead.add("a")
    await a.stop()
    const second = Array.from({ length: 40 }, (_, i) => event(`t${i % 8}`, "orders", { i: 40 + i }))
    await inTransaction(db.pool, (tx) => run(s.append(tx, second)))
    const killedAt = Date.now()
    const heir = startRelay(b, { owner: "b", leaseMs: 1_000, maxIdleMs: 50 })
    await eventually(() => (relayedIds(b).length === 80 ? true : undefined), 10_000)
    const tookOver = Date.now() - killedAt
    await heir.stop()
    // Not before the dead relay's lease ran out, and within a few seconds of it.
    expect(tookOver).toBeGreaterThanOrEqual(500)
    expect(tookOver).toBeLessThan(5_000)
    // The heir resumed from the dead relay's stored positions: the first 40 were not resent.
    expect(first.every((e) => b.sends.get(e.id) === 1)).toBe(true)
    expect(new Set(relayedIds(b)).size).toBe(80)
  })

  it("several relays share the partitions; each partition has one owner", async () => {
    const { s, schema } = await store()
    const b = broker(s)
    const r1 = startRelay(b, { owner: "r1", leaseMs: 600, maxIdleMs: 50 })
    const r2 = startRelay(b, { owner: "r2", leaseMs: 600, maxIdleMs: 50 })
    const owners = async () =>
      (await rows(
        `SELECT owner, count(*)::int AS n FROM "${schema}".relay_partitions GROUP BY owner ORDER BY owner`,
      )) as Array<{
        owner: string | null
        n: number
      }>
    const split = await eventually(async () => {
      const o = await owners()
      return o.length === 2 && o.every((x) => x.owner !== null && x.n === s.relay.partitions / 2)
        ? o
        : undefined
    }, 10_000)
    expect(split.map((o) => o.owner)).toEqual(["r1", "r2"])
    const list = Array.from({ length: 200 }, (_, i) => event(`t${i % 20}`, `c${i % 3}`, { i }))
    await inTransaction(db.pool, (tx) => run(s.append(tx, list)))
    await eventually(() => (relayedIds(b).length === 200 ? true : undefined), 10_000)
    await Promise.all([r1.stop(), r2.stop()])
    expect([...b.sends.values()].every((n) => n === 1)).toBe(true)
  })
})

describe("fairness and bulk backlogs", () => {
  it("forwards a quiet tenant's event within a round while 20,000 events of another tenant in its partition drain, on a table never analyzed", async () => {
    const { s, schema } = await store()
    const S = `"${schema}"`
    const busy = { tenant: "bulk", channel: "import" }
    const partition = await run(s.relay.partitionOf(busy))
    let quiet = { tenant: "quiet-0", channel: "orders" }
    for (let i = 1; (await run(s.relay.partitionOf(quiet))) !== partition; i++)
      quiet = { tenant: `quiet-${i}`, channel: "orders" }
    // A bulk load from outside the SDK, on a table whose statistics say it is empty.
    await db.pool.query(`ALTER TABLE ${S}.outbox SET (autovacuum_enabled = false)`)
    await db.pool.query(
      `INSERT INTO ${S}.outbox (id, tenant, channel, type, data, headers, event_time)
       SELECT gen_random_uuid(), $1, $2, 'bulk.row', jsonb_build_object('i', g), '{}'::jsonb, now()
       FROM generate_series(1, 20000) g`,
      [busy.tenant, busy.channel],
    )
    const quietEvent = event(quiet.tenant, quiet.channel, { i: 0 })
    await inTransaction(db.pool, (tx) => run(s.append(tx, [quietEvent])))

    const b = broker(s)
    const started = Date.now()
    const relay = startRelay(b, { owner: "r" })
    const quietAt = await eventually(
      () => (relayedIds(b).includes(quietEvent.id) ? Date.now() : undefined),
      30_000,
    )
    const busyWhenQuiet = relayedIds(b).length - 1
    await eventually(() => (relayedIds(b).length === 20_001 ? true : undefined), 120_000)
    const drained = Date.now() - started
    await relay.stop()
    // The quiet event did not wait for the backlog: it went out while most of it was still
    // there (in log order it is the last row). How long it took is the benchmark's business.
    expect(busyWhenQuiet).toBeLessThan(10_000)
    expect(new Set(relayedIds(b)).size).toBe(20_001)
    console.info(
      `relay: quiet event after ${quietAt - started} ms with ${busyWhenQuiet} of 20,000 bulk rows forwarded; backlog drained in ${drained} ms (${Math.round(20_001 / (drained / 1000))} events/s)`,
    )
  }, 180_000)
})

describe("upgrade", () => {
  it("an outbox at schema v3 with forwarded, leased, parked and waiting rows upgrades without losing or re-sending a row", async () => {
    const schema = `upgrade_${Date.now()}`
    const S = `"${schema}"`
    const client: pg.Client = await db.client()
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${S}`)
    await client.query(
      `CREATE TABLE ${S}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    )
    for (const m of migrations.filter((m) => m.version <= 3)) {
      await client.query(m.sql(S))
      await client.query(`INSERT INTO ${S}.schema_migrations (version, name) VALUES ($1, $2)`, [
        m.version,
        m.name,
      ])
    }
    await client.query(`UPDATE ${S}.meta SET schema_version = 3`)
    const insert = async (e: Envelope, extra: string) =>
      client.query(
        `INSERT INTO ${S}.outbox (id, tenant, channel, type, data, headers, event_time, forwarded_at, parked_at, lease_owner, lease_until, attempts)
         SELECT $1::uuid, $2, $3, $4, $5::jsonb, '{}'::jsonb, now(), ${extra}`,
        [e.id, e.tenant, e.channel, e.type, JSON.stringify(e.data)],
      )
    const forwarded = [event("acme", "orders", { i: 0 }), event("beta", "orders", { i: 0 })]
    const parked = event("acme", "orders", { i: 1 })
    const leased = event("acme", "orders", { i: 2 })
    const waiting = [event("acme", "orders", { i: 3 }), event("beta", "orders", { i: 1 })]
    const afterWaiting = event("beta", "orders", { i: 2 })
    for (const e of forwarded) await insert(e, "now(), NULL, NULL, NULL, 1")
    await insert(parked, "NULL, now(), NULL, NULL, 10")
    await insert(leased, "NULL, NULL, 'old-relay', now() + interval '1 hour', 1")
    for (const e of waiting) await insert(e, "NULL, NULL, NULL, NULL, 0")
    // A row forwarded after a waiting one (the v3 relay took addresses in parallel).
    await insert(afterWaiting, "now(), NULL, NULL, NULL, 1")
    await client.end()

    const result = await migrate({ pool: db.pool, schema })
    expect(result.applied).toEqual(migrations.filter((m) => m.version > 3).map((m) => m.version))
    const { s } = await store(schema)
    const b = broker(s)
    // The partitions holding v3 rows are not fresh: a v3 relay may have put them on a broker,
    // so a broker found empty at the next start must be refilled from them.
    const partitionsOfRows = new Set(
      (await rows(`SELECT DISTINCT ${S}.relay_partition(tenant, channel, 8) AS p FROM ${S}.outbox`)).map(
        (r) => Number(r.p),
      ),
    )
    for (const p of partitionsOfRows) {
      const claim = await b.provide(OutboxRelay.use((st) => st.claim(p, "probe", 1_000)))
      expect(claim?.state.fresh).toBe(false)
      await b.provide(OutboxRelay.use((st) => st.release(p, "probe")))
    }
    await b.provide(relayBatch({ owner: "new" }))
    expect(new Set(relayedIds(b))).toEqual(new Set([leased.id, ...waiting.map((e) => e.id)]))
    expect(relayedIds(b)).toHaveLength(3)
    expect(await b.provide(OutboxRelay.use((st) => st.backlog))).toBe(0)
  })
})
