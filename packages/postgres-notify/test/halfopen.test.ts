import { type Bus, createBus, type DeliveredEvent } from "@bus/core"
import { type BlackholeProxy, startBlackholeProxy, viaProxy } from "@bus/test-infra"
import { Effect, type ManagedRuntime } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, PostgresOutbox, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { postgresOutbox } from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { run } from "./support/run.js"

/**
 * Half-open connections: a proxy between the bus and Postgres stops forwarding without
 * closing anything (a NAT that dropped the flow, a failover behind a load balancer).
 * TCP notices nothing; the bus's own bounds must: the LISTEN heartbeat, the statement and
 * poll deadlines, the bounded close. Producers write through a direct connection, as
 * another service would, so events keep committing during the outage.
 */

let db: TestDb
const cleanups: Array<() => Promise<unknown>> = []
const A = { tenant: "acme", channel: "orders" }

// Short bounds for the test; the defaults are 5 s + 5 s heartbeat, 15 s statements, 5 s polls.
const bounds = {
  heartbeatIntervalMs: 200,
  heartbeatTimeoutMs: 500,
  queryTimeoutMs: 1_000,
  pollTimeoutMs: 500,
  connectTimeoutMs: 1_000,
  closeGraceMs: 300,
  pollIntervalMs: 1_000,
  degradedPollIntervalMs: 200,
  reconnectInitialDelayMs: 50,
  reconnectMaxDelayMs: 500,
  probeTimeoutMs: 1_000,
  pressure: false as const,
}
// A silent LISTEN connection is declared dead within interval + timeout.
const detectionBound = bounds.heartbeatIntervalMs + bounds.heartbeatTimeoutMs

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {})
  await db?.close()
})

const storeOf = (bus: Bus): Promise<PostgresOutboxService> =>
  (bus.runtime as unknown as ManagedRuntime.ManagedRuntime<PostgresOutbox, never>).runPromise(
    PostgresOutbox.use((s) => Effect.succeed(s)),
  )

const setup = async () => {
  const schema = await db.freshSchema()
  const proxy: BlackholeProxy = await startBlackholeProxy({ targetPort: Number(new URL(db.url).port) })
  cleanups.push(() => proxy.close())
  // The producer: its own store on a direct connection, never through the proxy.
  const producer: PostgresOutboxHandle = await createPostgresOutboxStore({
    connectionString: db.url,
    schema,
    migrate: false,
    listen: false,
    pressure: false,
  })
  cleanups.push(() => producer.close())
  const pgn = postgresOutbox({ connectionString: viaProxy(db.url, proxy), schema, migrate: false, ...bounds })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  cleanups.push(() => bus.close())
  const store = await storeOf(bus)
  let n = 0
  const sent: Array<string> = []
  const publish = async (count: number) => {
    const events = Array.from({ length: count }, () => event(A.tenant, A.channel, { n: n++ }))
    await inTransaction(db.pool, (c) => run(producer.store.append(c, events)))
    sent.push(...events.map((e) => e.id))
  }
  const collectFrom = (sub: AsyncIterable<DeliveredEvent>) => {
    const got: Array<string> = []
    void (async () => {
      for await (const e of sub) got.push(e.id)
    })().catch(() => {})
    return got
  }
  return { proxy, bus, store, publish, sent, collectFrom }
}

const dupes = (ids: ReadonlyArray<string>) => ids.length - new Set(ids).size

describe("half-open connections (a proxy that blackholes without closing)", () => {
  it("degrades within the bound, replaces the listener after restore, and loses nothing", async () => {
    const { proxy, bus, store, publish, sent, collectFrom } = await setup()
    await eventually(() => (store.healthNow().notify === "healthy" ? true : undefined), 10_000)
    const live = bus.subscribe({ ...A, from: "now" })
    await live.ready
    const delivered = collectFrom(live)
    const consumed: Array<string> = []
    const consumer = bus.consume({ ...A, group: "billing" }, (e) => {
      consumed.push(e.id)
    })
    await publish(10)
    await eventually(() => (delivered.length >= 10 && consumed.length >= 10 ? true : undefined), 10_000)
    const connectsBefore = store.healthNow().connects

    // The outage: nothing forwarded, nothing closed. Events keep committing meanwhile.
    const outageStart = Date.now()
    proxy.blackhole()
    await publish(10)
    await eventually(() => (store.healthNow().notify === "degraded" ? true : undefined), 10_000)
    const detectionMs = Date.now() - outageStart
    const degraded = store.healthNow()
    expect(degraded.reason).toBeTruthy()

    // A subscription started during the outage waits (it does not die, nor resolve early).
    const late = bus.subscribe({ ...A, from: "now" })
    let lateReadyAt: number | undefined
    void late.ready.then(() => {
      lateReadyAt = Date.now()
    })
    const lateDelivered = collectFrom(late)
    // Stay down long enough for several reconnect attempts and poll deadlines to pass.
    await new Promise((r) => setTimeout(r, 2_500))
    const during = store.healthNow()
    expect(during.notify).toBe("degraded")
    expect(during.heartbeatFailures).toBeGreaterThanOrEqual(1)
    // Reconnect attempts keep failing within their own bound (connect timeout), and polls
    // keep being abandoned at their deadline rather than queueing behind a hung one.
    expect(during.failedAttempts).toBeGreaterThanOrEqual(1)
    expect(during.pollTimeouts).toBeGreaterThanOrEqual(2)
    expect(lateReadyAt).toBeUndefined()
    expect(delivered.length).toBe(10)

    const restoredAt = Date.now()
    proxy.restore()
    await eventually(
      () => (delivered.length >= 20 && consumed.length >= 20 && lateReadyAt !== undefined ? true : undefined),
      15_000,
    )
    const recoveryMs = Date.now() - restoredAt
    const lateReadyMs = (lateReadyAt ?? Number.NaN) - restoredAt
    await eventually(() => (store.healthNow().notify === "healthy" ? true : undefined), 15_000)
    const healthyMs = Date.now() - restoredAt
    const after = store.healthNow()
    expect(after.connects).toBeGreaterThan(connectsBefore)
    expect(after.pollFailures).toBe(0)

    // After the outage, everything flows to the old subscribers and to the late one.
    await publish(5)
    await eventually(
      () => (delivered.length >= 25 && consumed.length >= 25 && lateDelivered.length >= 5 ? true : undefined),
      10_000,
    )
    await new Promise((r) => setTimeout(r, 300))
    expect(new Set(delivered)).toEqual(new Set(sent))
    expect(new Set(consumed)).toEqual(new Set(sent))
    expect(dupes(delivered)).toBe(0)
    expect(dupes(consumed)).toBe(0)
    expect(lateDelivered).toEqual(sent.slice(20))
    console.log(
      `half-open: sent ${sent.length}, delivered ${delivered.length} (dupes ${dupes(delivered)}), consumed ${consumed.length} (dupes ${dupes(consumed)}); ` +
        `degraded ${detectionMs} ms after the blackhole (bound ${detectionBound} ms: "${degraded.reason}"); ` +
        `after restore: all delivered in ${recoveryMs} ms, late subscription ready in ${lateReadyMs} ms, healthy in ${healthyMs} ms`,
    )
    expect(detectionMs).toBeLessThanOrEqual(detectionBound + 1_000)
    await consumer.close()
    await live.close()
    await late.close()
  })

  it("close() returns within its bound while every socket is blackholed", async () => {
    const { proxy, bus, store, publish, collectFrom } = await setup()
    await eventually(() => (store.healthNow().notify === "healthy" ? true : undefined), 10_000)
    const sub = bus.subscribe({ ...A, from: "now" })
    await sub.ready
    collectFrom(sub)
    bus.consume({ ...A, group: "mailer" }, () => {})
    await publish(3)
    proxy.blackhole()
    // A member that claims its group only now: its claim goes out on a silent socket and is
    // retried for as long as the outage lasts. Closing used to wait for those retries (the
    // claim was uninterruptible), so close() hung until the sockets were reset.
    bus.consume({ ...A, group: "claiming" }, () => {})
    // Statements in flight on silent sockets: reads woken by the publish, polls, the lease.
    await publish(3)
    await new Promise((r) => setTimeout(r, 400))
    const started = Date.now()
    await bus.close()
    const closeMs = Date.now() - started
    console.log(`half-open: bus.close() during a blackhole returned in ${closeMs} ms`)
    // Listener grace + group release + pool grace + 1 s, with room for a loaded machine.
    expect(closeMs).toBeLessThan(3 * bounds.closeGraceMs + 1_000 + 1_500)
    // Nothing is left connected through the proxy once the bus is closed and the proxy restored.
    proxy.restore()
    await eventually(() => (proxy.connections() === 0 ? true : undefined), 5_000)
  })
})
