import { createBus, type DeliveredEvent } from "@bus/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { addressChannel, createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { event, eventually, startDb, type TestDb } from "./support/db.js"
import { run } from "./support/run.js"

/**
 * After-commit batched NOTIFY: the SDK owns BEGIN / COMMIT, appends send no NOTIFY inside
 * the transaction, and one NOTIFY per address goes out per window, after COMMIT.
 */

let db: TestDb
const closers: Array<() => Promise<unknown>> = []
const A = { tenant: "acme", channel: "orders" }
const B = { tenant: "acme", channel: "invoices" }

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => {})
  await db?.close()
})

/** A producer store (no LISTEN) with the given window. */
const producer = async (schema: string, batchWindowMs: number): Promise<PostgresOutboxHandle> => {
  const h = await createPostgresOutboxStore({
    connectionString: db.url,
    schema,
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    batchWindowMs,
    pressure: { intervalMs: 0 },
  })
  closers.push(() => h.close())
  return h
}

/** A raw LISTEN client counting notifications per channel. */
const counter = async (schema: string) => {
  const client = await db.client("bus-test-counter")
  const counts = new Map<string, number>()
  client.on("notification", (n) => counts.set(n.channel, (counts.get(n.channel) ?? 0) + 1))
  for (const a of [A, B]) await client.query(`LISTEN ${addressChannel(schema, a)}`)
  return {
    of: (a: typeof A) => counts.get(addressChannel(schema, a)) ?? 0,
    total: () => [...counts.values()].reduce((x, y) => x + y, 0),
  }
}

/** A consumer bus built with postgresOutbox(), subscribed to A from now. */
const consumer = async (schema: string, pollIntervalMs: number) => {
  const pgn = postgresOutbox({
    connectionString: db.url,
    schema,
    migrate: false,
    pollIntervalMs,
    pressure: false,
  })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  closers.push(() => bus.close())
  const got: Array<DeliveredEvent> = []
  const sub = bus.subscribe({ ...A, from: "now" })
  await sub.ready
  void (async () => {
    for await (const e of sub) got.push(e)
  })().catch(() => {})
  return { bus, got }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe("after-commit batched NOTIFY", () => {
  it("sends no NOTIFY inside producer commits, then one per address for a window of 20 transactions", async () => {
    const schema = await db.freshSchema()
    const p = await producer(schema, 60_000)
    const notes = await counter(schema)
    const { got } = await consumer(schema, 0)
    const transaction = p.transaction
    const sent = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        transaction(async (tx) => {
          const events = [event(A.tenant, A.channel, { i }), event(B.tenant, B.channel, { i })]
          await run(p.store.append(tx, events))
          return events[0]!
        }),
      ),
    )
    // Every transaction committed; none of them notified (the window is a minute long).
    // (The consumer may still have read some: its listener's first connect wakes every
    // watched address once, as after any reconnect.)
    await sleep(300)
    expect(notes.total()).toBe(0)
    await run(p.store.flushNotify)
    await eventually(() => (got.length === 20 ? true : undefined))
    await sleep(200)
    expect([notes.of(A), notes.of(B)]).toEqual([1, 1])
    expect(new Set(got.map((e) => e.id))).toEqual(new Set(sent.map((e) => e.id)))
    expect(p.pressure().notifyingCommits).toBe(1)
  })

  it("sends nothing for a rolled-back transaction, nor for one Postgres rolled back at COMMIT", async () => {
    const schema = await db.freshSchema()
    const p = await producer(schema, 60_000)
    const notes = await counter(schema)
    const e1 = event(A.tenant, A.channel)
    await expect(
      p.transaction(async (tx) => {
        await run(p.store.append(tx, [e1]))
        throw new Error("business rule failed")
      }),
    ).rejects.toThrow("business rule failed")
    // An error swallowed inside fn leaves a failed transaction: COMMIT rolls back, and says so.
    const e2 = event(A.tenant, A.channel)
    await expect(
      p.transaction(async (tx) => {
        await run(p.store.append(tx, [e2]))
        await tx.query("SELECT 1/0").catch(() => {})
      }),
    ).rejects.toThrow(/rolled back/)
    await run(p.store.flushNotify)
    await sleep(300)
    expect(notes.total()).toBe(0)
    const page = await run(p.store.read(A, "beginning", 10))
    expect(page.events).toHaveLength(0)
  })

  it("wakes subscribers one short window after COMMIT (default 10 ms)", async () => {
    const schema = await db.freshSchema()
    const p = await producer(schema, 10)
    const notes = await counter(schema)
    const { got } = await consumer(schema, 0)
    const e = event(A.tenant, A.channel, { hello: "world" })
    const started = Date.now()
    await p.transaction(async (tx) => {
      await run(p.store.append(tx, [e]))
    })
    await eventually(() => (got.length === 1 ? true : undefined), 5_000)
    const latency = Date.now() - started
    expect(got[0]!.id).toBe(e.id)
    // The counter listens on a connection of its own: its copy of the NOTIFY may land a moment later.
    await eventually(() => (notes.of(A) >= 1 ? true : undefined), 5_000)
    expect(notes.of(A)).toBe(1)
    expect(latency).toBeLessThan(2_000)
    console.log(`[batched] commit → delivery ${latency} ms with a 10 ms window`)
  })

  it("still delivers when the wake-up never comes: the fallback poll covers it", async () => {
    const schema = await db.freshSchema()
    // The window outlasts the test: no NOTIFY is ever sent for this commit.
    const p = await producer(schema, 600_000)
    const notes = await counter(schema)
    const { got } = await consumer(schema, 300)
    const e = event(A.tenant, A.channel)
    await p.transaction(async (tx) => {
      await run(p.store.append(tx, [e]))
    })
    await eventually(() => (got.length === 1 ? true : undefined), 5_000)
    expect(got[0]!.id).toBe(e.id)
    expect(notes.total()).toBe(0)
  })
})
