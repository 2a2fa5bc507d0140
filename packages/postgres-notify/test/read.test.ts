import type { DeliveredEvent } from "@bus/core"
import type { Envelope } from "@bus/core/adapter"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { event, inTransaction, seal, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []
const address = { tenant: "acme", channel: "orders" }

const store = async (schema?: string): Promise<PostgresOutboxService> => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: schema ?? (await db.freshSchema()),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
  })
  handles.push(h)
  return h.store
}

/** Reads everything after `cursor`, page by page. */
const drain = async (s: PostgresOutboxService, cursor: string, limit = 1000) => {
  const events: Array<DeliveredEvent> = []
  let pages = 0
  for (;;) {
    const page = await run(s.read(address, cursor, limit))
    pages++
    events.push(...page.events)
    cursor = page.next
    if (!page.more) return { events, cursor, pages }
  }
}

const publish = (s: PostgresOutboxService, events: ReadonlyArray<Envelope>) =>
  inTransaction(db.pool, (c) => run(s.append(c, events)))

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

describe("out-of-order commits (invariant 3)", () => {
  it("delivers the transaction that inserted first but committed last, on the next read", async () => {
    const s = await store()
    const start = await run(s.head(address))
    const a = await db.client("bus-test-a")
    const b = await db.client("bus-test-b")
    const eA = event("acme", "orders", { who: "A" })
    const eB = event("acme", "orders", { who: "B" })

    await a.query("BEGIN")
    await run(s.append(a, [eA]))
    await b.query("BEGIN")
    await run(s.append(b, [eB]))
    await b.query("COMMIT")

    const first = await drain(s, start)
    expect(first.events.map((e) => e.id)).toEqual([eB.id])

    await a.query("COMMIT")
    // A took the lower sequence number: a reader keeping "last seq" and asking seq > last would skip it.
    const seqs = await db.pool.query(`SELECT id::text, seq FROM "${s.schema}".outbox ORDER BY seq`)
    expect(seqs.rows.map((r) => r.id)).toEqual([eA.id, eB.id])
    const second = await drain(s, first.cursor)
    expect(second.events.map((e) => e.id)).toEqual([eA.id])
    // Each event's own cursor resumes right after it.
    expect((await drain(s, first.events[0]!.cursor)).events.map((e) => e.id)).toEqual([eA.id])
    expect((await drain(s, second.cursor)).events).toHaveLength(0)
  })

  it("loses nothing across many interleaved writers", async () => {
    const s = await store()
    let cursor = await run(s.head(address))
    const seen: Array<string> = []
    const published: Array<string> = []
    const writers = await Promise.all(Array.from({ length: 6 }, (_, i) => db.client(`bus-test-w${i}`)))
    for (let round = 0; round < 20; round++) {
      // Open all, append in one order, commit in a shuffled order, read in between.
      for (const w of writers) await w.query("BEGIN")
      for (const w of writers) {
        const e = event("acme", "orders", { round })
        published.push(e.id)
        await run(s.append(w, [e]))
      }
      const order = [...writers].sort(() => Math.random() - 0.5)
      for (const w of order) {
        await w.query("COMMIT")
        const got = await drain(s, cursor, 3)
        cursor = got.cursor
        seen.push(...got.events.map((e) => e.id))
      }
    }
    expect(new Set(seen).size).toBe(seen.length)
    expect([...seen].sort()).toEqual([...published].sort())
  })
})

describe("a long-running unrelated write transaction", () => {
  const holdMs = Number(process.env.BUS_LONG_TX_MS ?? 3_000)

  it(`does not hold back delivery while it stays open (${holdMs} ms), and its own event arrives once after`, async () => {
    const s = await store()
    let cursor = await run(s.head(address))
    const long = await db.client("bus-test-long")
    await long.query("BEGIN")
    await long.query("SELECT pg_current_xact_id()") // takes an xid: a write transaction
    const late = event("acme", "orders", { late: true })
    await run(s.append(long, [late]))

    const published: Array<string> = []
    const delivered: Array<string> = []
    const lags: Array<number> = []
    const started = Date.now()
    while (Date.now() - started < holdMs) {
      const e = event("acme", "orders", { at: Date.now() })
      await publish(s, [e])
      published.push(e.id)
      const committedAt = Date.now()
      const got = await drain(s, cursor, 5)
      cursor = got.cursor
      delivered.push(...got.events.map((x) => x.id))
      lags.push(Date.now() - committedAt)
      await new Promise((r) => setTimeout(r, 50))
    }
    // Everything committed was delivered at once, without waiting for the open transaction.
    expect(delivered).toEqual(published)
    expect(Math.max(...lags)).toBeLessThan(1_000)

    await long.query("COMMIT")
    const after = await drain(s, cursor)
    expect(after.events.map((e) => e.id)).toEqual([late.id])
    expect((await drain(s, after.cursor)).events).toHaveLength(0)
  })
})

describe("paging", () => {
  it("pages through several deltas with small limits, and every event's cursor resumes right after it", async () => {
    const s = await store()
    const start = await run(s.head(address))
    const all: Array<Envelope> = []
    const open = await db.client("bus-test-open")
    await open.query("BEGIN")
    const held = Array.from({ length: 4 }, (_, i) => event("acme", "orders", { held: i }))
    await run(s.append(open, held))
    for (let t = 0; t < 5; t++) {
      const batch = Array.from({ length: 7 }, (_, i) => event("acme", "orders", { t, i }))
      await publish(s, batch)
      all.push(...batch)
    }
    await publish(s, [event("other", "orders"), event("acme", "other")])

    const firstPage = await run(s.read(address, start, 3))
    expect(firstPage.more).toBe(true)
    // Commit more in the middle of paging: the rest of the old delta, then the new one.
    await open.query("COMMIT")
    const tail = Array.from({ length: 5 }, (_, i) => event("acme", "orders", { tail: i }))
    await publish(s, tail)

    const rest = await drain(s, firstPage.next, 3)
    const got = [...firstPage.events, ...rest.events]
    // The held transaction committed after paging began: it may come anywhere after the
    // first page but exactly once; the rest keeps commit order within each transaction.
    expect(got.map((e) => e.id).sort()).toEqual([...all, ...held, ...tail].map((e) => e.id).sort())
    expect(got.filter((e) => !held.some((h) => h.id === e.id)).map((e) => e.id)).toEqual(
      [...all, ...tail].map((e) => e.id),
    )
    expect(rest.pages).toBeGreaterThan(5)

    for (let i = 0; i < got.length; i++) {
      const resumed = await drain(s, got[i]!.cursor, 4)
      expect(resumed.events.map((e) => e.id)).toEqual(got.slice(i + 1).map((e) => e.id))
    }
  })

  it("reads from the beginning in pages and continues live", async () => {
    const s = await store()
    const first = Array.from({ length: 10 }, (_, i) => event("acme", "orders", { i }))
    await publish(s, first)
    const p1 = await run(s.read(address, "beginning", 4))
    expect(p1.events.map((e) => e.id)).toEqual(first.slice(0, 4).map((e) => e.id))
    expect(p1.more).toBe(true)
    const p2 = await drain(s, p1.next, 4)
    expect(p2.events.map((e) => e.id)).toEqual(first.slice(4).map((e) => e.id))
    const next = event("acme", "orders", { i: 10 })
    await publish(s, [next])
    expect((await drain(s, p2.cursor)).events.map((e) => e.id)).toEqual([next.id])
  })

  it("returns an empty page with a usable cursor when nothing is new", async () => {
    const s = await store()
    const head = await run(s.head(address))
    const page = await run(s.read(address, head, 10))
    expect(page).toMatchObject({ events: [], more: false })
    expect(page.next.startsWith("pg2:")).toBe(true)
  })
})

describe("cursor errors", () => {
  it("refuses malformed cursors", async () => {
    const s = await store()
    const head = await run(s.head(address))
    const epoch = head.split(":")[2]!
    for (const bad of [
      "",
      "garbage",
      "pg1:",
      seal("pg1:xyz:1.2"),
      seal(`pg1:${epoch}`),
      seal(`pg1:${epoch}:zz!.1`),
      seal(`pg1:${epoch}:10.5.9`), // xip outside [xmin, xmax)
      seal(`pg1:${epoch}:10.5.3,1`), // xip not ascending
      seal(`pg1:${epoch}:10.5:10.9:3.1`), // last row visible in `from`
      `${head}:extra`,
      `${head}x`, // the check no longer matches (appending to a base-36 number is another number)
      head.replace(/:[0-9a-z]+\.([0-9a-z]+):/, ":1.$1:"), // an edited snapshot
    ]) {
      const err = await failure(s.read(address, bad, 10))
      expect(err._tag, bad).toBe("CursorInvalid")
      expect((err as { reason?: string }).reason, bad).toBe("malformed")
    }
  })

  it("refuses cursors of another outbox, another store, or from ahead of the database", async () => {
    const s1 = await store()
    const s2 = await store()
    const err = await failure(s1.read(address, await run(s2.head(address)), 10))
    expect(err).toMatchObject({ _tag: "CursorInvalid", reason: "foreign" })
    expect(await failure(s1.read(address, "mem1:abcdef01:3", 10))).toMatchObject({ reason: "foreign" })
    const head = await run(s1.head(address))
    const [, , epoch] = head.split(":")
    const ahead = seal(`pg1:${epoch}:${(10n ** 12n).toString(36)}.0`)
    expect(await failure(s1.read(address, ahead, 10))).toMatchObject({ reason: "foreign" })
  })

  it("expires cursors older than pruned rows, and only those", async () => {
    const s = await store()
    const old = await run(s.head(address))
    await publish(s, [event("acme", "orders"), event("acme", "orders")])
    const mid = await run(s.read(address, "beginning", 1))
    const beforePrune = await run(s.head(address))
    await new Promise((r) => setTimeout(r, 20))
    expect(await run(s.prune(0, { keepUnforwarded: false }))).toBe(2)
    expect(await failure(s.read(address, old, 10))).toMatchObject({
      _tag: "CursorInvalid",
      reason: "expired",
    })
    // A paging cursor that had not yet delivered a pruned row is expired too.
    expect(await failure(s.read(address, mid.next, 10))).toMatchObject({ reason: "expired" })
    // A cursor that covered every pruned row still works, as do the head and the beginning.
    expect((await run(s.read(address, beforePrune, 10))).events).toHaveLength(0)
    expect((await run(s.read(address, "beginning", 10))).events).toHaveLength(0)
    const after = event("acme", "orders")
    await publish(s, [after])
    expect((await drain(s, beforePrune)).events.map((e) => e.id)).toEqual([after.id])
  })

  it("keeps unforwarded rows when asked, and never prunes rows newer than the age", async () => {
    const s = await store()
    await publish(s, [event("acme", "orders")])
    // The relay forwards the first transaction: its partition's position now covers it.
    const forwarded = await run(s.read(address, "beginning", 10))
    await publish(s, [event("acme", "orders")])
    expect(await run(s.prune(60_000, { keepUnforwarded: false }))).toBe(0)
    await new Promise((r) => setTimeout(r, 20))
    expect(await run(s.prune(0, { keepUnforwarded: true }))).toBe(0)
    const partition = await run(s.relay.partitionOf(address))
    const claim = (await run(s.relay.claim(partition, "relay-1", 10_000)))!
    await run(claim.commit({ position: forwarded.next, ahead: {} }))
    expect(await run(s.prune(0, { keepUnforwarded: true }))).toBe(1)
    expect((await run(s.read(address, "beginning", 10))).events).toHaveLength(1)
  })
})
