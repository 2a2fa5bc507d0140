import { type BusOptions, CursorInvalid, createBus } from "@bus/core"
import { memoryBroker } from "@bus/core/adapter"
import { Effect, Exit, Logger, Metric, Scope, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  createPostgresOutboxStore,
  makePostgresOutboxStore,
  type PostgresOutboxHandle,
  pressureMetrics,
  relayWakeupAddress,
} from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { type NotifyMode, postgresOutbox, postgresOutboxOf } from "../src/index.js"
import { notifyModeFor } from "../src/wiring.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

/** The NOTIFY-pressure monitor, the retention job, and postgresOutbox()'s NOTIFY mode. */

let db: TestDb
const closers: Array<() => Promise<unknown>> = []
const address = { tenant: "acme", channel: "orders" }
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => {})
  await db?.close()
})

/** A store built in a scope whose log lines (warnings included) are captured. */
const storeWithLogs = async (options: Parameters<typeof makePostgresOutboxStore>[0]) => {
  const logs: Array<string> = []
  const capture = Logger.make((o) => {
    logs.push(`${o.logLevel}: ${(Array.isArray(o.message) ? o.message : [o.message]).join(" ")}`)
  })
  const scope = Effect.runSync(Scope.make())
  const store = await Effect.runPromise(
    Scope.provide(makePostgresOutboxStore(options), scope).pipe(Effect.provide(Logger.layer([capture]))),
  )
  closers.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
  return { store, logs }
}

/** Sequential one-event transactions, each notifying, at about `perSecond` for `ms`. */
const notifyAt = async (s: PostgresOutboxService, perSecond: number, ms: number) => {
  const started = Date.now()
  let n = 0
  while (Date.now() - started < ms) {
    await inTransaction(db.pool, (c) => run(s.append(c, [event("acme", "orders", { n })])))
    n++
    const due = started + (n * 1000) / perSecond
    const wait = due - Date.now()
    if (wait > 0) await sleep(wait)
  }
  return n
}

describe("NOTIFY-pressure monitor", () => {
  it("reports the notifying-commit rate, exports it as gauges, and warns naming the flip near the threshold", async () => {
    const { store: s, logs } = await storeWithLogs({
      pool: db.pool,
      schema: await db.freshSchema(),
      migrate: false,
      listen: false,
      pollIntervalMs: 0,
      // A low threshold keeps the test independent of how fast a loaded machine commits.
      pressure: { intervalMs: 500, notifyRateThreshold: 30, warnAt: 0.8 },
    })
    // Below the threshold: 5/s is a sixth of it, no warning.
    await notifyAt(s, 5, 1_600)
    await sleep(600)
    const calm = s.pressure()
    expect(calm.level).toBe("ok")
    expect(logs.filter((l) => l.includes("BUS_TRANSPORT"))).toHaveLength(0)

    // Over 80 % of it: aim at 45/s; the assertions use the rate actually achieved.
    const sent = await notifyAt(s, 45, 2_200)
    const achieved = sent / 2.2
    const hot = s.pressure()
    console.log(`[pressure] sent ${sent} notifying commits in 2.2 s; monitor said ${JSON.stringify(hot)}`)
    expect(achieved).toBeGreaterThan(24)
    expect(hot.notifyingCommitsPerSecond).toBeGreaterThan(achieved * 0.6)
    expect(hot.notifyingCommitsPerSecond).toBeLessThan(achieved * 1.5)
    expect(hot.level === "near-threshold" || hot.level === "over-threshold").toBe(true)
    expect(hot.databaseCommitsPerSecond).toBeGreaterThan(0)
    expect(hot.notificationQueueUsage).toBeGreaterThanOrEqual(0)
    expect(hot.warning).toMatch(/BUS_TRANSPORT=nats/)
    expect(hot.warning).toMatch(/BUS_NOTIFY_RATE/)
    const warnings = logs.filter((l) => l.includes("BUS_TRANSPORT=nats"))
    expect(warnings.length).toBe(1)
    expect(warnings[0]).toMatch(/^WARN/i)

    const snapshot = await Effect.runPromise(Metric.snapshot)
    const gauge = snapshot.find(
      (m) => m.id === "bus_pg_notifying_commits_per_second" && m.attributes?.schema === s.schema,
    )
    expect(gauge).toBeDefined()
    expect((gauge!.state as { value: number }).value).toBeGreaterThan(0)
    expect(pressureMetrics.notificationQueueUsage).toBeDefined()
  })

  it("sees backends queued on NOTIFY's commit lock", async () => {
    const s = (
      await storeWithLogs({
        pool: db.pool,
        schema: await db.freshSchema(),
        migrate: false,
        listen: false,
        pollIntervalMs: 0,
        pressure: { intervalMs: 0 },
      })
    ).store
    // Make every commit wait for a synchronous standby that does not exist. A notifying
    // transaction then sits in its commit holding NOTIFY's lock, and the next ones queue.
    // (The checkpointer publishes the new setting; give it a moment.)
    await db.pool.query("ALTER SYSTEM SET synchronous_standby_names = 'bus_test_nobody'")
    await db.pool.query("SELECT pg_reload_conf()")
    await sleep(1_000)
    const clients = await Promise.all([1, 2, 3].map(() => db.client("bus-test-notifier")))
    const commits: Array<Promise<unknown>> = []
    try {
      for (const c of clients) {
        await c.query("BEGIN")
        await run(s.append(c, [event("acme", "orders")]))
        commits.push(c.query("COMMIT").catch(() => {}))
        await sleep(100)
      }
      const seen = await eventually(async () => {
        const p = await run(s.samplePressure)
        return p.notifyCommitLockWaits >= 2 ? p : undefined
      }, 10_000)
      console.log(
        `[pressure] lock waits seen: ${seen.notifyCommitLockWaits} commit-lock, ${seen.notifyQueueWaits} queue`,
      )
    } finally {
      await db.pool.query("ALTER SYSTEM RESET synchronous_standby_names")
      await db.pool.query("SELECT pg_reload_conf()")
      await Promise.all(commits)
    }
    expect((await run(s.samplePressure)).notifyCommitLockWaits).toBe(0)
  })
})

describe("retention job", () => {
  it("prunes rows older than maxAgeMs on its schedule; a cursor behind them fails as expired", async () => {
    const schema = await db.freshSchema()
    const h: PostgresOutboxHandle = await createPostgresOutboxStore({
      pool: db.pool,
      schema,
      migrate: false,
      listen: false,
      pollIntervalMs: 0,
      pressure: false,
      retention: { maxAgeMs: 60_000, intervalMs: 200 },
    })
    closers.push(() => h.close())
    const s = h.store
    const old = Date.now() - 3_600_000
    const stale = Array.from({ length: 5 }, (_, i) => ({
      ...event("acme", "orders", { i }),
      time: new Date(old + i).toISOString(),
    }))
    const fresh = event("acme", "orders", { fresh: true })
    const before = await run(s.head(address))
    await inTransaction(db.pool, (c) => run(s.append(c, stale)))
    await inTransaction(db.pool, (c) => run(s.append(c, [fresh])))
    const status = await eventually(() => {
      const r = s.retention()
      return r.deleted >= 5 ? r : undefined
    })
    expect(status).toMatchObject({ enabled: true, maxAgeMs: 60_000, intervalMs: 200, keepUnforwarded: false })
    const page = await run(s.read(address, "beginning", 10))
    expect(page.events.map((e) => e.id)).toEqual([fresh.id])
    const error = await failure(s.read(address, before, 10))
    expect(error).toBeInstanceOf(CursorInvalid)
    expect(error).toMatchObject({ reason: "expired" })
  })

  it("is off unless configured, and keeps unforwarded rows by default for relay deployments", async () => {
    const off = await createPostgresOutboxStore({
      pool: db.pool,
      schema: await db.freshSchema(),
      migrate: false,
      listen: false,
      pressure: false,
    })
    closers.push(() => off.close())
    expect(off.store.retention().enabled).toBe(false)
    const relay = await createPostgresOutboxStore({
      pool: db.pool,
      schema: await db.freshSchema(),
      migrate: false,
      listen: false,
      pressure: false,
      notify: "relay",
      retention: true,
    })
    closers.push(() => relay.close())
    expect(relay.store.retention()).toMatchObject({
      enabled: true,
      keepUnforwarded: true,
      maxAgeMs: 7 * 24 * 3_600_000,
      intervalMs: 3_600_000,
    })
  })
})

describe("postgresOutbox()", () => {
  it("picks the NOTIFY mode from the transport the bus selected (configuration and BUS_* read once, by the bus)", async () => {
    expect(notifyModeFor("postgres-notify")).toBe("addresses")
    expect(notifyModeFor("nats")).toBe("none")
    const schema = await db.freshSchema()
    const broker = memoryBroker()
    const modeOf = async (options: Omit<BusOptions, "outbox">, notify?: NotifyMode) => {
      const outbox = postgresOutbox({
        connectionString: db.url,
        schema,
        migrate: false,
        pressure: false,
        ...(notify !== undefined ? { notify } : {}),
      })
      const bus = await createBus({ outbox, relay: false, ...options })
      try {
        return (await postgresOutboxOf(bus)).notify
      } finally {
        await bus.close()
      }
    }
    expect(await modeOf({ env: false })).toBe("addresses")
    expect(await modeOf({ env: false, transport: { use: "memory-broker", broker } })).toBe("none")
    expect(await modeOf({ env: false, transport: { notifyRate: 5_000, broker } })).toBe("none")
    expect(await modeOf({ env: { BUS_TRANSPORT: "memory-broker" }, transport: { broker } })).toBe("none")
    expect(await modeOf({ env: { BUS_NOTIFY_RATE: "10" }, transport: { notifyRate: 5_000, broker } })).toBe(
      "addresses",
    )
    // An explicit notify wins.
    expect(await modeOf({ env: false }, "none")).toBe("none")
  })

  it("with a broker selected, producers wake relays on the relay channel, seen on changes", async () => {
    const schema = await db.freshSchema()
    const { store: relayStore } = await storeWithLogs({
      connectionString: db.url,
      schema,
      migrate: false,
      notify: "relay",
      pollIntervalMs: 0,
      pressure: false,
    })
    await eventually(() => (relayStore.healthNow().notify === "healthy" ? true : undefined))
    const ticks: Array<unknown> = []
    const scope = Effect.runSync(Scope.make())
    closers.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
    Effect.runFork(
      Stream.runForEach(relayStore.changes, (a) => Effect.sync(() => ticks.push(a))).pipe(
        Effect.forkIn(scope),
      ),
    )
    await sleep(100)
    await inTransaction(db.pool, (c) => run(relayStore.append(c, [event("acme", "orders")])))
    await eventually(() => (ticks.length > 0 ? true : undefined), 5_000)
    expect(ticks[0]).toEqual(relayWakeupAddress)
  })
})
