import { randomBytes } from "node:crypto"
import type { Address } from "@bus/core/adapter"
import { Effect } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  addressChannel,
  createPostgresOutboxStore,
  type PostgresOutboxHandle,
  type PostgresOutboxOptions,
  relayChannel,
} from "../src/adapter.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { collect, openScope, run } from "./support/run.js"

let db: TestDb
const cleanups: Array<() => Promise<unknown>> = []
const orders: Address = { tenant: "acme", channel: "orders" }
const invoices: Address = { tenant: "acme", channel: "invoices" }

const open = async (options: Partial<PostgresOutboxOptions> = {}) => {
  const appName = `bus-listener-${randomBytes(3).toString("hex")}`
  const h: PostgresOutboxHandle = await createPostgresOutboxStore({
    connectionString: db.url,
    schema: options.schema ?? (await db.freshSchema()),
    listenerApplicationName: appName,
    reconnectInitialDelayMs: 50,
    reconnectMaxDelayMs: 500,
    ...options,
  })
  const changes = collect(h.store.changes)
  const scope = openScope()
  cleanups.push(async () => {
    await changes.stop()
    await scope.close()
    await h.close()
  })
  const woke = (a: Address) =>
    changes.items.filter((x) => x.tenant === a.tenant && x.channel === a.channel).length
  return { h, s: h.store, appName, changes, scope, woke }
}

const publish = (
  s: PostgresOutboxHandle["store"],
  events: Parameters<PostgresOutboxHandle["store"]["append"]>[1],
) => inTransaction(db.pool, (c) => run(s.append(c, events)))

const listenerBackends = async (appName: string) =>
  Number(
    (await db.pool.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", [appName]))
      .rows[0].count,
  )

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const c of cleanups.reverse()) await c()
  await db?.close()
})

describe("LISTEN wake-ups", () => {
  it("probes itself healthy and wakes watched addresses only, within milliseconds", async () => {
    const { h, s, scope, woke, appName } = await open()
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    expect(h.health()).toMatchObject({ connected: true, connects: 1, reason: undefined })
    expect(await listenerBackends(appName)).toBe(1)
    await scope.use(s.watch(orders))
    await publish(s, [event("acme", "invoices")])
    const started = Date.now()
    await publish(s, [event("acme", "orders")])
    await eventually(() => (woke(orders) >= 1 ? true : undefined))
    const latency = Date.now() - started
    expect(latency).toBeLessThan(1_000)
    expect(woke(invoices)).toBe(0)
    expect(h.health().channels).toBe(1)
  })

  it("stops LISTENing when the last watcher leaves", async () => {
    const { h, s } = await open()
    const w1 = openScope()
    const w2 = openScope()
    await w1.use(s.watch(orders))
    await w2.use(s.watch(orders))
    expect(h.health().channels).toBe(1)
    await w1.close()
    expect(h.health().channels).toBe(1)
    await w2.close()
    expect(h.health().channels).toBe(0)
  })

  it("reconnects after its backend is terminated and wakes every watched address again", async () => {
    const { h, s, scope, woke, appName } = await open()
    await scope.use(s.watch(orders))
    await scope.use(s.watch(invoices))
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    const before = { orders: woke(orders), invoices: woke(invoices) }

    for (let round = 1; round <= 3; round++) {
      expect(await db.server.terminateConnections({ applicationName: appName })).toBe(1)
      await eventually(() => (h.health().connects === round + 1 && h.health().connected ? true : undefined))
      // The reconnect itself is a wake-up for everything watched: readers catch up from their cursors.
      await eventually(() =>
        woke(orders) > before.orders && woke(invoices) > before.invoices ? true : undefined,
      )
      before.orders = woke(orders)
      before.invoices = woke(invoices)
      // And it is live again.
      await publish(s, [event("acme", "orders")])
      await eventually(() => (woke(orders) > before.orders ? true : undefined))
      before.orders = woke(orders)
    }
    expect(h.health().disconnects).toBe(3)
  })

  it("keeps going when another writer sends malformed payloads on our channels", async () => {
    const schema = await db.freshSchema()
    const { h, s, scope, woke } = await open({ schema })
    await scope.use(s.watch(orders))
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    const raw = await db.client("bus-test-evil")
    const channel = addressChannel(schema, orders)
    const garbage = [
      "",
      "x",
      "1:acme",
      "1:acme:orders:extra",
      "2:acme:orders",
      "1:evil tenant:orders",
      "1:acme:invoices",
      '{"json":true}',
      "\u00e9\u0001\u007f",
      "x".repeat(7_999),
    ]
    for (const payload of garbage) await raw.query("SELECT pg_notify($1, $2)", [channel, payload])
    await raw.query(`NOTIFY "${channel}"`)
    await raw.query("SELECT pg_notify($1, $2)", [relayChannel(schema), "junk"])
    // Every unrecognised payload wakes every address of that channel: never fewer than needed.
    await eventually(() => (woke(orders) >= garbage.length + 1 ? true : undefined))
    expect(woke(invoices)).toBe(0)
    expect(h.health().malformedNotifications).toBeGreaterThanOrEqual(garbage.length - 1)
    const n = woke(orders)
    await publish(s, [event("acme", "orders")])
    await eventually(() => (woke(orders) > n ? true : undefined))
    expect(h.health().connected).toBe(true)
    expect(h.health().disconnects).toBe(0)
  })

  it("wakes relays on their own channel and after reconnects", async () => {
    const { h, s, scope, appName } = await open({ notify: "both" })
    const relay = collect(s.relayWakeups)
    cleanups.push(relay.stop)
    await scope.use(s.watchRelay)
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    const n = relay.items.length
    await publish(s, [event("acme", "orders")])
    await eventually(() => (relay.items.length > n ? true : undefined))
    const m = relay.items.length
    await db.server.terminateConnections({ applicationName: appName })
    await eventually(() => (relay.items.length > m ? true : undefined))
  })

  it("sends after-commit wake-ups on request (notify: none on append)", async () => {
    const { h, s, scope, woke } = await open({ notify: "none", pollIntervalMs: 0 })
    await scope.use(s.watch(orders))
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    const n = woke(orders)
    await publish(s, [event("acme", "orders")])
    await new Promise((r) => setTimeout(r, 300))
    expect(woke(orders)).toBe(n)
    await run(s.wake([orders]))
    await eventually(() => (woke(orders) > n ? true : undefined))
  })
})

describe("fallback poll", () => {
  it("catches commits whose NOTIFY never came, waking only changed addresses, one query per tick", async () => {
    const { h, s, scope, woke } = await open({ notify: "none", pollIntervalMs: 200 })
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    // Nothing watched: the poll costs nothing at all.
    await new Promise((r) => setTimeout(r, 500))
    expect(h.health().polls).toBe(0)
    await scope.use(s.watch(orders))
    await scope.use(s.watch(invoices))
    await eventually(() => (h.health().polls >= 2 ? true : undefined))
    const base = { orders: woke(orders), invoices: woke(invoices) }
    await publish(s, [event("acme", "orders")])
    await eventually(() => (woke(orders) > base.orders ? true : undefined), 3_000)
    const polls = h.health().polls
    await new Promise((r) => setTimeout(r, 600))
    expect(woke(invoices)).toBe(base.invoices)
    expect(woke(orders)).toBe(base.orders + 1)
    expect(h.health().polls - polls).toBeLessThanOrEqual(4)
  })

  it("degrades when its own NOTIFY never arrives, says why, and polls faster", async () => {
    // The listener sits in another database: NOTIFY is per database, so the probe sent
    // through the pool never reaches it (as behind pgbouncer in transaction mode).
    const other = `elsewhere_${randomBytes(3).toString("hex")}`
    await db.pool.query(`CREATE DATABASE ${other}`)
    const schema = await db.freshSchema()
    const pool = new pg.Pool({ connectionString: db.url, application_name: "bus-test-degraded" })
    pool.on("error", () => {})
    cleanups.push(() => pool.end())
    const { h, s, scope, woke } = await open({
      schema,
      pool,
      connectionString: db.url.replace(/\/[^/]*$/, `/${other}`),
      probeTimeoutMs: 300,
      pollIntervalMs: 60_000,
      degradedPollIntervalMs: 200,
    })
    await eventually(() => (h.health().notify === "degraded" ? true : undefined))
    expect(h.health().reason).toContain("did not arrive")
    expect(h.health().pollIntervalMs).toBe(200)
    await scope.use(s.watch(orders))
    await new Promise((r) => setTimeout(r, 300))
    const n = woke(orders)
    await inTransaction(pool, (c) => run(s.append(c, [event("acme", "orders")])))
    await eventually(() => (woke(orders) > n ? true : undefined), 3_000)
  })
})

describe("close", () => {
  it("releases the listener connection, the pool, the change stream, its timers and sockets", async () => {
    const resources = () => {
      const counts: Record<string, number> = {}
      for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1
      return counts
    }
    // Stores of earlier tests are closed first: their heartbeat, poll and pool timers come
    // and go, and would make the baseline below a moving target.
    for (const c of cleanups.splice(0).reverse()) await c()
    // The test's own pool keeps one idle connection: open it first so it counts in `before`.
    await db.pool.query("SELECT 1")
    const before = resources()
    const appName = `bus-listener-${randomBytes(3).toString("hex")}`
    const h = await createPostgresOutboxStore({
      connectionString: db.url,
      schema: await db.freshSchema(),
      listenerApplicationName: appName,
      applicationName: `${appName}-pool`,
      pollIntervalMs: 50,
    })
    const changes = collect(h.store.changes)
    const scope = openScope()
    await scope.use(h.store.watch(orders))
    await eventually(() => (h.health().notify === "healthy" ? true : undefined))
    await publish(h.store, [event("acme", "orders")])
    await eventually(() => (h.health().polls > 0 ? true : undefined))
    await scope.close()
    await h.close()
    await h.close()
    await eventually(() => (changes.ended() ? true : undefined))
    // The backends exit a moment after their clients said goodbye.
    await eventually(async () => {
      const left = await db.pool.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name LIKE $1",
        [`${appName}%`],
      )
      return left.rows[0].n === 0 ? true : undefined
    }, 5_000)
    const polls = h.health().polls
    await new Promise((r) => setTimeout(r, 200))
    expect(h.health().polls).toBe(polls)
    expect(Effect.runSync(h.store.health).connected).toBe(false)
    // Nothing of the store is left in the event loop: no timer, no socket.
    await eventually(() => {
      const after = resources()
      return (after.Timeout ?? 0) <= (before.Timeout ?? 0) &&
        (after.TCPSocketWrap ?? 0) <= (before.TCPSocketWrap ?? 0)
        ? true
        : undefined
    }, 5_000)
  })
})
