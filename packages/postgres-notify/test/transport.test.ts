import { randomBytes } from "node:crypto"
import type { DeliveredEvent } from "@bus/core"
import { type Envelope, outboxTransport, Transport } from "@bus/core/adapter"
import { Effect, Fiber, Layer, ManagedRuntime, Stream } from "effect"
import pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { PostgresOutbox, postgresOutboxLayer } from "../src/adapter.js"
import { event, eventually, startDb, type TestDb } from "./support/db.js"

/**
 * End to end through the core's outbox transport (the per-address feed over this
 * store): what a subscriber sees under the faults of design invariant 1 and 3.
 */

let db: TestDb
const disposers: Array<() => Promise<unknown>> = []
const address = { tenant: "acme", channel: "orders" }

const makeBus = async () => {
  const appName = `bus-listener-${randomBytes(3).toString("hex")}`
  const layer = outboxTransport({ name: "postgres-notify", pageSize: 50 }).pipe(
    Layer.provideMerge(
      postgresOutboxLayer({
        connectionString: db.url,
        schema: await db.freshSchema(),
        listenerApplicationName: appName,
        applicationName: `${appName}-pool`,
        reconnectInitialDelayMs: 50,
        reconnectMaxDelayMs: 1_000,
        pollIntervalMs: 2_000,
      }),
    ),
  )
  const runtime = ManagedRuntime.make(layer)
  disposers.push(() => runtime.dispose())
  const store = await runtime.runPromise(
    Effect.gen(function* () {
      return yield* PostgresOutbox
    }),
  )
  const subscribe = (from: "now" | "beginning" = "now") => {
    const got: Array<DeliveredEvent> = []
    const fiber = runtime.runFork(
      Effect.gen(function* () {
        const transport = yield* Transport
        yield* Stream.runForEach(transport.subscribe({ ...address, from }), (e) =>
          Effect.sync(() => {
            got.push(e)
          }),
        )
      }),
    )
    disposers.push(() => runtime.runPromise(Fiber.interrupt(fiber)))
    return got
  }
  // Producers use their own connections, as an application would; retried across outages.
  const producer = new pg.Pool({ connectionString: db.url, application_name: "bus-test-producer", max: 4 })
  producer.on("error", () => {})
  disposers.push(() => producer.end())
  const publish = async (events: ReadonlyArray<Envelope>) => {
    const c = await producer.connect()
    // A checked-out client has no 'error' listener; the restart test drops connections.
    const ignore = () => {}
    c.on("error", ignore)
    try {
      await c.query("BEGIN")
      await runtime.runPromise(store.append(c, events))
      await c.query("COMMIT")
    } catch (error) {
      await c.query("ROLLBACK").catch(() => {})
      c.removeListener("error", ignore)
      c.release(true)
      throw error
    }
    c.removeListener("error", ignore)
    c.release()
  }
  return { runtime, store, subscribe, publish, appName, producer }
}

const report = (name: string, sent: ReadonlyArray<Envelope>, got: ReadonlyArray<DeliveredEvent>) => {
  const ids = got.map((e) => e.id)
  const duplicates = ids.length - new Set(ids).size
  console.log(
    `[fault] ${name}: sent ${sent.length}, delivered ${new Set(ids).size}, duplicates ${duplicates}`,
  )
  expect(duplicates).toBe(0)
  expect([...new Set(ids)].sort()).toEqual(sent.map((e) => e.id).sort())
}

/** Publishes `count` events one transaction each, retrying while the server is away. */
const keepPublishing = async (
  publish: (events: ReadonlyArray<Envelope>) => Promise<void>,
  count: number,
  sent: Array<Envelope>,
  gapMs = 10,
) => {
  for (let i = 0; i < count; i++) {
    const e = event("acme", "orders", { i })
    for (;;) {
      try {
        await publish([e])
        break
      } catch {
        // A failed COMMIT may still have committed; the event id makes the retry harmless.
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    sent.push(e)
    await new Promise((r) => setTimeout(r, gapMs))
  }
}

beforeAll(async () => {
  db = await startDb()
})

// Each test's bus (runtime, subscriptions, producer pool) is closed before the next starts.
afterEach(async () => {
  for (const d of disposers.splice(0).reverse()) await d().catch(() => {})
})

afterAll(async () => {
  await db?.close()
})

describe("subscribers over the Postgres outbox", () => {
  it("get an out-of-order commit live: A inserts first, B commits first, both arrive once", async () => {
    const { subscribe, runtime, store } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const a = await db.client("bus-test-a")
    const b = await db.client("bus-test-b")
    const eA = event("acme", "orders", { who: "A" })
    const eB = event("acme", "orders", { who: "B" })
    await a.query("BEGIN")
    await runtime.runPromise(store.append(a, [eA]))
    await b.query("BEGIN")
    await runtime.runPromise(store.append(b, [eB]))
    await b.query("COMMIT")
    await eventually(() => (got.length === 1 ? true : undefined))
    expect(got[0]!.id).toBe(eB.id)
    await a.query("COMMIT")
    await eventually(() => (got.length === 2 ? true : undefined))
    expect(got.map((e) => e.id)).toEqual([eB.id, eA.id])
    report("out-of-order commit, live", [eA, eB], got)
  })

  it("lose nothing when the LISTEN connection is terminated mid-stream", async () => {
    const { subscribe, publish, appName } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const sent: Array<Envelope> = []
    const producing = keepPublishing(publish, 200, sent, 5)
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 150))
      await db.server.terminateConnections({ applicationName: appName })
    }
    await producing
    await eventually(() => (new Set(got.map((e) => e.id)).size >= sent.length ? true : undefined), 15_000)
    report("pg_terminate_backend on the listener x4", sent, got)
  })

  it("lose nothing across a Postgres restart", async () => {
    const { subscribe, publish } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const sent: Array<Envelope> = []
    const producing = keepPublishing(publish, 60, sent, 10)
    await new Promise((r) => setTimeout(r, 200))
    await db.server.restart()
    await producing
    await eventually(() => (new Set(got.map((e) => e.id)).size >= sent.length ? true : undefined), 20_000)
    report("Postgres restart", sent, got)
  })

  it("lose nothing while Postgres is paused", async () => {
    const pauseMs = Number(process.env.BUS_PAUSE_MS ?? 3_000)
    const { subscribe, publish } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const sent: Array<Envelope> = []
    const producing = keepPublishing(publish, 40, sent, 20)
    await new Promise((r) => setTimeout(r, 200))
    await db.server.pause()
    await new Promise((r) => setTimeout(r, pauseMs))
    await db.server.resume()
    await producing
    await eventually(() => (new Set(got.map((e) => e.id)).size >= sent.length ? true : undefined), 20_000)
    report(`Postgres paused ${pauseMs} ms`, sent, got)
  })

  it("keep delivering while an unrelated write transaction stays open, and get its event once after", async () => {
    const holdMs = Number(process.env.BUS_LONG_TX_MS ?? 3_000)
    const { subscribe, publish, runtime, store } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const long = await db.client("bus-test-long")
    await long.query("BEGIN")
    const late = event("acme", "orders", { late: true })
    await runtime.runPromise(store.append(long, [late]))
    const sent: Array<Envelope> = []
    const lags: Array<number> = []
    const started = Date.now()
    while (Date.now() - started < holdMs) {
      const e = event("acme", "orders", { t: Date.now() })
      await publish([e])
      sent.push(e)
      const committed = Date.now()
      await eventually(() => (got.some((x) => x.id === e.id) ? true : undefined), 5_000)
      lags.push(Date.now() - committed)
      await new Promise((r) => setTimeout(r, 100))
    }
    console.log(
      `[fault] open transaction ${holdMs} ms: live lag max ${Math.max(...lags)} ms, median ${lags.sort((x, y) => x - y)[Math.floor(lags.length / 2)]} ms`,
    )
    expect(Math.max(...lags)).toBeLessThan(1_000)
    await long.query("COMMIT")
    sent.push(late)
    await eventually(() => (got.some((x) => x.id === late.id) ? true : undefined), 5_000)
    await new Promise((r) => setTimeout(r, 300))
    report(`unrelated transaction open ${holdMs} ms`, sent, got)
  })

  it("deliver large events intact through a NOTIFY that carries only a pointer", async () => {
    const { subscribe, publish } = await makeBus()
    const got = subscribe()
    await new Promise((r) => setTimeout(r, 300))
    const sizes = [7_999, 8_000, 1024 * 1024]
    const sent = sizes.map((bytes) => {
      const base = event("acme", "orders", { blob: "" })
      const pad = bytes - Buffer.byteLength(JSON.stringify(base), "utf8")
      return { ...base, data: { blob: "z".repeat(pad) } }
    })
    for (const e of sent) await publish([e])
    await eventually(() => (got.length === 3 ? true : undefined))
    expect(got.map((e) => Buffer.byteLength(JSON.stringify({ ...e, cursor: undefined }), "utf8"))).toEqual(
      sizes,
    )
    expect(got.map(({ cursor: _c, ...e }) => e)).toEqual(sent)
  })
})
