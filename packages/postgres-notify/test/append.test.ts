import { type Envelope, makeEnvelope } from "@bus/core/adapter"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { addressChannel, createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []

const store = async (schema: string) => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema,
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
  })
  handles.push(h)
  return h.store
}

const readAll = async (s: Awaited<ReturnType<typeof store>>, tenant: string, channel: string) => {
  const page = await run(s.read({ tenant, channel }, "beginning", 10_000))
  return page.events
}

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

describe("append inside the caller's pg transaction", () => {
  it("is visible after COMMIT and never after ROLLBACK", async () => {
    const s = await store(await db.freshSchema())
    const kept = event("acme", "orders", { n: 1 })
    const dropped = event("acme", "orders", { n: 2 })
    await inTransaction(db.pool, (c) => run(s.append(c, [kept])))
    await expect(
      inTransaction(db.pool, async (c) => {
        await run(s.append(c, [dropped]))
        throw new Error("business failure")
      }),
    ).rejects.toThrow("business failure")
    const events = await readAll(s, "acme", "orders")
    expect(events.map((e) => e.id)).toEqual([kept.id])
    expect(events[0]).toMatchObject({ ...kept })
  })

  it("is invisible to readers until the transaction commits", async () => {
    const s = await store(await db.freshSchema())
    const c = await db.pool.connect()
    try {
      await c.query("BEGIN")
      await run(s.append(c, [event("acme", "orders")]))
      expect(await readAll(s, "acme", "orders")).toHaveLength(0)
      await c.query("COMMIT")
      expect(await readAll(s, "acme", "orders")).toHaveLength(1)
    } finally {
      c.release()
    }
  })

  it("refuses a pool, a client outside a transaction, a failed transaction and unknown objects", async () => {
    const s = await store(await db.freshSchema())
    const e = [event("acme", "orders")]
    const fromPool = await failure(s.append(db.pool, e))
    expect(fromPool._tag).toBe("NotInTransaction")
    expect(fromPool.message).toContain("pg.Pool")

    const idle = await db.client()
    expect((await failure(s.append(idle, e)))._tag).toBe("NotInTransaction")

    const broken = await db.pool.connect()
    try {
      for (let i = 0; i < 20; i++) {
        await broken.query("BEGIN")
        // The rejection arrives before the server's "failed transaction" status: the
        // check must not trust the stale status in between.
        await broken.query("SELECT 1/0").catch(() => {})
        const err = await failure(s.append(broken, e))
        expect(err._tag).toBe("NotInTransaction")
        expect(err.message).toContain("failed")
        await broken.query("ROLLBACK")
      }
    } finally {
      await broken.query("ROLLBACK").catch(() => {})
      broken.release()
    }

    expect((await failure(s.append({}, e)))._tag).toBe("NotInTransaction")
    expect((await failure(s.append(null, e)))._tag).toBe("NotInTransaction")
    expect(await readAll(s, "acme", "orders")).toHaveLength(0)
  })

  it("checks the transaction by round trip when statements are still in flight", async () => {
    const s = await store(await db.freshSchema())
    const c = await db.client()
    // BEGIN not awaited: pg's recorded status is still "idle"; the SAVEPOINT probe runs after BEGIN.
    const begun = c.query("BEGIN")
    await run(s.append(c, [event("acme", "orders")]))
    await begun
    await c.query("COMMIT")
    expect(await readAll(s, "acme", "orders")).toHaveLength(1)

    const c2 = await db.client()
    const pending = c2.query("SELECT pg_sleep(0.05)")
    expect((await failure(s.append(c2, [event("acme", "orders")])))._tag).toBe("NotInTransaction")
    await pending
  })

  it("rejects unstorable events before touching the transaction, which stays usable", async () => {
    const s = await store(await db.freshSchema())
    const good = event("acme", "orders", { ok: true })
    const nul = { ...event("acme", "orders"), data: { text: "a\u0000b" } }
    const surrogate = { ...event("acme", "orders"), data: "\ud800" }
    const badName = { ...event("acme", "orders"), tenant: "a.b" }
    const badTime = { ...event("acme", "orders"), time: "yesterday" }
    const badId = { ...event("acme", "orders"), id: "not-a-uuid" }
    await inTransaction(db.pool, async (c) => {
      for (const bad of [nul, surrogate, badName, badTime, badId]) {
        const err = await failure(s.append(c, [good, bad as Envelope]))
        expect(["InvalidEvent", "InvalidName"]).toContain(err._tag)
      }
      // The transaction was not aborted by any of the refusals.
      await run(s.append(c, [good]))
      // An escaped backslash followed by "u0000" is ordinary text, not a NUL.
      await run(s.append(c, [{ ...event("acme", "orders"), data: "\\u0000" }]))
    })
    const events = await readAll(s, "acme", "orders")
    expect(events).toHaveLength(2)
    expect(events[1]!.data).toBe("\\u0000")
  })

  it("stores a repeated event id once", async () => {
    const s = await store(await db.freshSchema())
    const e = event("acme", "orders")
    await inTransaction(db.pool, (c) => run(s.append(c, [e, e])))
    await inTransaction(db.pool, (c) => run(s.append(c, [e])))
    expect(await readAll(s, "acme", "orders")).toHaveLength(1)
  })

  it("writes makeEnvelope's fresh ids without the conflict guard, and guards every later write of them", async () => {
    const s = await store(await db.freshSchema())
    const prepared = (c: pg.PoolClient) =>
      c
        .query<{ name: string }>("SELECT name FROM pg_prepared_statements")
        .then((r) => r.rows.map((x) => x.name))
    const a = event("acme", "orders", { n: 1 })
    const b = event("acme", "orders", { n: 2 })
    // A rolled-back first write still claims the ids: the retry keeps the guard.
    await expect(
      inTransaction(db.pool, async (c) => {
        await run(s.append(c, [a, b]))
        expect((await prepared(c)).some((n) => n.startsWith("bus_appendfn1_"))).toBe(true)
        throw new Error("business failure")
      }),
    ).rejects.toThrow("business failure")
    await inTransaction(db.pool, async (c) => {
      await run(s.append(c, [a, b]))
      await run(s.append(c, [a]))
      // The caller's transaction is intact after the repeats.
      await c.query("SELECT 1")
    })
    // A caller-chosen id that a fresh publish already wrote: a no-op, never a unique violation.
    const c0 = event("acme", "orders", { n: 3 })
    await inTransaction(db.pool, (c) => run(s.append(c, [c0])))
    const { id } = c0
    const again = await run(makeEnvelope({ tenant: "acme", channel: "orders", type: "test.event", id }))
    await inTransaction(db.pool, async (c) => {
      await run(s.append(c, [again]))
      await c.query("SELECT 1")
    })
    // A batch that mixes a built envelope with a copy takes the guarded path and claims both.
    const d = event("acme", "orders", { n: 4 })
    await inTransaction(db.pool, (c) => run(s.append(c, [d, { ...d }])))
    await inTransaction(db.pool, (c) => run(s.append(c, [d])))
    const events = await readAll(s, "acme", "orders")
    expect(events.map((e) => (e.data as { n: number }).n)).toEqual([1, 2, 3, 4])
  })

  it("keeps the order of one transaction's events", async () => {
    const s = await store(await db.freshSchema())
    const batch = Array.from({ length: 50 }, (_, i) => event("acme", "orders", { i }))
    await inTransaction(db.pool, async (c) => {
      await run(s.append(c, batch.slice(0, 20)))
      await run(s.append(c, batch.slice(20)))
    })
    const events = await readAll(s, "acme", "orders")
    expect(events.map((e) => (e.data as { i: number }).i)).toEqual(batch.map((_, i) => i))
  })

  it.each([7_999, 8_000, 1024 * 1024])("round-trips a %i-byte event intact", async (bytes) => {
    const s = await store(await db.freshSchema())
    const base = event("acme", "big", { blob: "" })
    const overhead = Buffer.byteLength(JSON.stringify(base), "utf8")
    const e = {
      ...base,
      data: { blob: "é".repeat(Math.floor((bytes - overhead) / 2)) + "x".repeat((bytes - overhead) % 2) },
    }
    expect(Buffer.byteLength(JSON.stringify(e), "utf8")).toBe(bytes)
    await inTransaction(db.pool, (c) => run(s.append(c, [e])))
    const [got] = await readAll(s, "acme", "big")
    expect(got).toBeDefined()
    const { cursor: _cursor, ...envelope } = got!
    expect(envelope).toEqual(e)
  })
})

describe("NOTIFY from append", () => {
  it("sends one small notification per transaction and address, whatever the number of events", async () => {
    const schema = await db.freshSchema()
    const s = await store(schema)
    const listener = await db.client("bus-test-counter")
    const got: Array<pg.Notification> = []
    listener.on("notification", (n) => got.push(n))
    const orders = addressChannel(schema, { tenant: "acme", channel: "orders" })
    const invoices = addressChannel(schema, { tenant: "acme", channel: "invoices" })
    await listener.query(`LISTEN "${orders}"; LISTEN "${invoices}"`)

    await inTransaction(db.pool, async (c) => {
      for (let i = 0; i < 10; i++) {
        await run(
          s.append(
            c,
            Array.from({ length: 10 }, () => event("acme", "orders", { i })),
          ),
        )
      }
    })
    await eventually(() => (got.length >= 1 ? true : undefined))
    await new Promise((r) => setTimeout(r, 300))
    expect(got).toHaveLength(1)
    expect(got[0]).toMatchObject({ channel: orders, payload: "1:acme:orders" })

    got.length = 0
    await inTransaction(db.pool, (c) =>
      run(s.append(c, [event("acme", "orders"), event("acme", "invoices"), event("acme", "orders")])),
    )
    await eventually(() => (got.length >= 2 ? true : undefined))
    await new Promise((r) => setTimeout(r, 300))
    expect(got.map((n) => n.channel).sort()).toEqual([orders, invoices].sort())
    expect(got.every((n) => Buffer.byteLength(n.payload ?? "") < 150)).toBe(true)

    got.length = 0
    await expect(
      inTransaction(db.pool, async (c) => {
        await run(s.append(c, [event("acme", "orders")]))
        throw new Error("rollback")
      }),
    ).rejects.toThrow()
    await new Promise((r) => setTimeout(r, 300))
    expect(got).toHaveLength(0)
  })

  it("names every address channel in 63 bytes or less, without quoting, per schema", () => {
    const long = "a".repeat(64)
    const ch = addressChannel("bus", { tenant: long, channel: long })
    expect(ch).toMatch(/^[a-z0-9_]{1,63}$/)
    expect(addressChannel("bus", { tenant: "a", channel: "b" })).not.toBe(
      addressChannel("other", { tenant: "a", channel: "b" }),
    )
    expect(addressChannel("bus", { tenant: "a-b", channel: "c" })).not.toBe(
      addressChannel("bus", { tenant: "a", channel: "b-c" }),
    )
  })
})
