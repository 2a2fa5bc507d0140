import { type Bus, CursorInvalid, createBus } from "@bus/core"
import { addressTag } from "@bus/core/adapter"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, decodeCursor, encodeCursor } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

/**
 * Cursors from elsewhere (issue 13, item 4). A snapshot cursor describes the whole outbox,
 * so a cursor of one (tenant, channel) read for another is a valid position there: it
 * used to be accepted and skip every event of the other address between the two
 * positions. `pg2:` cursors name their address and are refused elsewhere; `pg1:` ones
 * (relay positions, cursors from before) are read unchecked.
 */

let db: TestDb
const closers: Array<() => Promise<unknown>> = []
const orders = { tenant: "acme", channel: "orders" }
const invoices = { tenant: "acme", channel: "invoices" }
const globex = { tenant: "globex", channel: "orders" }

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => {})
  await db?.close()
})

const publishTo = async (bus: Bus, address: typeof orders, from: number, n: number) => {
  await inTransaction(db.pool, async (c) => {
    for (let i = from; i < from + n; i++) {
      const e = event(address.tenant, address.channel, { i })
      await bus.publish(c, { tenant: e.tenant, channel: e.channel, type: e.type, data: { i } })
    }
  })
}

const take = async (bus: Bus, address: typeof orders, from: string, n: number) => {
  const sub = bus.subscribe({ ...address, from })
  const got: Array<number> = []
  let cursor: string | undefined
  for await (const e of sub) {
    got.push((e.data as { i: number }).i)
    cursor = e.cursor
    if (got.length === n) break
  }
  return { got, cursor: cursor! }
}

describe("cursors of another address (Postgres outbox)", () => {
  it("the store refuses a cursor read for another address before running a statement; pg1 cursors stay unchecked", async () => {
    const h = await createPostgresOutboxStore({
      pool: db.pool,
      schema: await db.freshSchema(),
      migrate: false,
      listen: false,
      pollIntervalMs: 0,
    })
    closers.push(() => h.close())
    const s = h.store
    await inTransaction(db.pool, (c) => run(s.append(c, [event("acme", "orders"), event("acme", "orders")])))
    const page = await run(s.read(orders, "beginning", 1))
    expect(page.more).toBe(true)
    for (const cursor of [page.next, page.events[0]!.cursor, await run(s.head(orders))]) {
      expect(cursor.startsWith(`pg2:${addressTag(orders)}:`)).toBe(true)
      for (const other of [invoices, globex]) {
        expect(await failure(s.read(other, cursor, 10))).toMatchObject({
          _tag: "CursorInvalid",
          reason: "address",
        })
      }
    }
    // The same position without the address (the older format) is accepted as before.
    const decoded = decodeCursor(page.next)
    if (decoded instanceof CursorInvalid) throw decoded
    const legacy = encodeCursor({ ...decoded, address: undefined })
    expect(legacy.startsWith("pg1:")).toBe(true)
    expect((await run(s.read(orders, legacy, 10))).events).toHaveLength(1)
    expect((await run(s.read(invoices, legacy, 10))).events).toHaveLength(0)
  })

  it("API: subscribe with another tenant's or channel's cursor fails (ready rejects); nothing is skipped; groups are unaffected", async () => {
    const pgn = postgresOutbox({
      connectionString: db.url,
      schema: await db.freshSchema(),
      migrate: false,
      pressure: false,
    })
    const bus = await createBus({
      outbox: pgn,
      env: false,
    })
    closers.push(() => bus.close())
    const handled = { orders: [] as Array<number>, globex: [] as Array<number> }
    const groups = [
      bus.consume({ ...orders, group: "mailer" }, (e) => {
        handled.orders.push((e.data as { i: number }).i)
      }),
      bus.consume({ ...globex, group: "mailer" }, (e) => {
        handled.globex.push((e.data as { i: number }).i)
      }),
    ]
    await publishTo(bus, globex, 0, 3)
    await publishTo(bus, orders, 0, 5)
    // A cursor of acme/orders, ahead of every globex/orders event.
    const { cursor } = await take(bus, orders, "beginning", 5)
    for (const other of [globex, invoices]) {
      const sub = bus.subscribe({ ...other, from: cursor })
      const refused = await sub.ready.then(
        () => undefined,
        (x: unknown) => x,
      )
      expect(refused).toBeInstanceOf(CursorInvalid)
      expect(refused).toMatchObject({ reason: "address" })
      const fromIterator = await (async () => {
        for await (const _ of sub) return "delivered"
        return "ended"
      })().catch((x: unknown) => x)
      expect(fromIterator).toBe(refused)
    }
    // The other tenant from the beginning loses nothing; the cursor's own address resumes after it.
    expect((await take(bus, globex, "beginning", 3)).got).toEqual([0, 1, 2])
    await publishTo(bus, orders, 5, 1)
    expect((await take(bus, orders, cursor, 1)).got).toEqual([5])
    await eventually(
      () => (handled.orders.length === 6 && handled.globex.length === 3 ? true : undefined),
      15_000,
    )
    await Promise.all(groups.map((g) => g.close()))
    expect(handled.orders).toEqual([0, 1, 2, 3, 4, 5])
    expect(handled.globex).toEqual([0, 1, 2])
  })
})
