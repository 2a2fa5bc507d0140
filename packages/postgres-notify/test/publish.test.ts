import { type Bus, createBus, defineChannel, type EventInput } from "@bus/core"
import { uuidv7 } from "@bus/core/adapter"
import { Schema } from "effect"
import { Kysely, PostgresDialect } from "kysely"
import type pg from "pg"
import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { addressChannel } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { eventually, startDb, type TestDb } from "./support/db.js"

/**
 * The publish fast path through the public API (`bus.publish`), against real Postgres:
 * the driver adapter remembered per client class, refusals before any statement, the
 * prepared INSERT's idempotence and the coalesced NOTIFY seen by a separate listener.
 */

let db: TestDb
let sql: postgres.Sql
const closers: Array<() => Promise<unknown>> = []

beforeAll(async () => {
  db = await startDb()
  sql = postgres(db.url, {
    max: 2,
    onnotice: () => {},
    connection: { application_name: "bus-test-postgresjs" },
  })
})

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => {})
  await sql?.end({ timeout: 5 })
  await db?.close()
})

const openBus = async (prepare?: boolean): Promise<{ bus: Bus; schema: string }> => {
  const schema = await db.freshSchema()
  const pgn = postgresOutbox({
    connectionString: db.url,
    schema,
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    pressure: false,
    ...(prepare === undefined ? {} : { prepare }),
  })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  closers.push(() => bus.close())
  return { bus, schema }
}

const ev = (channel: string, data: unknown = null, id?: string): EventInput => ({
  tenant: "acme",
  channel,
  type: "test.event",
  data: data as never,
  ...(id === undefined ? {} : { id }),
})

const rows = async (schema: string) =>
  (await db.pool.query(`SELECT id::text AS id, channel, data FROM "${schema}".outbox ORDER BY xid, seq`))
    .rows as Array<{
    id: string
    channel: string
    data: unknown
  }>

/** BEGIN … COMMIT on a client of its own (returned to the pool). */
const pgTx = async <A>(fn: (c: pg.PoolClient) => Promise<A>): Promise<A> => {
  const c = await db.pool.connect()
  try {
    await c.query("BEGIN")
    const out = await fn(c)
    await c.query("COMMIT")
    return out
  } catch (e) {
    await c.query("ROLLBACK").catch(() => {})
    throw e
  } finally {
    c.release()
  }
}

const rejection = async (p: Promise<unknown>): Promise<{ _tag?: string }> => {
  try {
    await p
  } catch (e) {
    return e as { _tag?: string }
  }
  throw new Error("expected a rejection")
}

describe("publish fast path", () => {
  it("keeps working with two client types in one process, the remembered adapter still checking each object", async () => {
    const { bus, schema } = await openBus()
    const kysely = new Kysely<Record<string, never>>({ dialect: new PostgresDialect({ pool: db.pool }) })
    const ids: Array<string> = []
    // Interleaved: pg client, postgres.js tx, Kysely trx, each class several times.
    for (let i = 0; i < 3; i++) {
      ids.push(...(await pgTx((c) => bus.publish(c, ev("mixed", { via: "pg", i })))).ids)
      ids.push(...(await sql.begin((tx) => bus.publish(tx, ev("mixed", { via: "postgres.js", i })))).ids)
      ids.push(
        ...(await kysely.transaction().execute((trx) => bus.publish(trx, ev("mixed", { via: "kysely", i }))))
          .ids,
      )
    }
    // After the pg adapter was remembered for pg's Client class, an idle client of that
    // class is still refused (the adapter checks the transaction every time), and so is a pool.
    const idle = await db.pool.connect()
    try {
      expect((await rejection(bus.publish(idle, ev("mixed"))))._tag).toBe("NotInTransaction")
    } finally {
      idle.release()
    }
    expect((await rejection(bus.publish(db.pool, ev("mixed"))))._tag).toBe("NotInTransaction")
    expect((await rejection(bus.publish(sql, ev("mixed"))))._tag).toBe("NotInTransaction")
    expect((await rejection(bus.publish(kysely, ev("mixed"))))._tag).toBe("NotInTransaction")
    expect((await rows(schema)).map((r) => r.id)).toEqual(ids)
  })

  it("refuses a bad event in a batch before any statement: nothing written, the caller's transaction usable", async () => {
    const { bus, schema } = await openBus()
    await db.pool.query(`CREATE TABLE "${schema}".orders (id int PRIMARY KEY)`)
    const bad: Array<[string, EventInput]> = [
      ["InvalidName", { tenant: "a.b", channel: "orders", type: "t" }],
      ["InvalidEvent", ev("orders", { when: new Date() })],
      ["InvalidEvent", ev("orders", { n: Number.NaN })],
      ["InvalidEvent", ev("orders", undefined, "not-a-uuid")],
      ["PayloadTooLarge", ev("orders", "x".repeat(2 * 1024 * 1024))],
      // Valid JSON, but Postgres cannot store it: caught by the Postgres store's own check.
      ["InvalidEvent", ev("orders", { text: "a\u0000b" })],
      ["InvalidEvent", ev("orders", "\ud800")],
    ]
    await pgTx(async (c) => {
      await c.query(`INSERT INTO "${schema}".orders VALUES (1)`)
      for (const [tag, b] of bad) {
        const err = await rejection(bus.publish(c, [ev("orders", { ok: 1 }), b, ev("orders", { ok: 2 })]))
        expect(err._tag).toBe(tag)
      }
      // Still usable: not aborted by any refusal, and nothing of the refused batches written.
      expect((await c.query(`SELECT count(*)::int AS n FROM "${schema}".outbox`)).rows[0].n).toBe(0)
      await bus.publish(c, [ev("orders", { ok: 3 }), ev("orders", "\\u0000 is text here")])
      await c.query(`INSERT INTO "${schema}".orders VALUES (2)`)
    })
    expect((await rows(schema)).map((r) => r.data)).toEqual([{ ok: 3 }, "\\u0000 is text here"])
    expect((await db.pool.query(`SELECT count(*)::int AS n FROM "${schema}".orders`)).rows[0].n).toBe(2)
  })

  it("refuses an event that fails its typed channel's schema before any statement, the transaction usable", async () => {
    const { bus, schema } = await openBus()
    const paid = defineChannel("paid", {
      "order.paid": Schema.toStandardSchemaV1(Schema.Struct({ orderId: Schema.String, cents: Schema.Int })),
    })
    await pgTx(async (c) => {
      const err = await rejection(
        bus.publish(c, [
          { tenant: "acme", channel: paid, type: "order.paid", data: { orderId: "o-1", cents: 100 } },
          { tenant: "acme", channel: paid, type: "order.paid", data: { orderId: "o-2", cents: 1.5 } },
        ]),
      )
      expect(err).toMatchObject({ _tag: "InvalidEvent", reason: "schema" })
      // Not aborted: the next statements of the caller's transaction run and commit.
      expect((await c.query(`SELECT count(*)::int AS n FROM "${schema}".outbox`)).rows[0].n).toBe(0)
      await bus.publish(c, {
        tenant: "acme",
        channel: paid,
        type: "order.paid",
        data: { orderId: "o-3", cents: 7 },
      })
    })
    expect((await rows(schema)).map((r) => [r.channel, r.data])).toEqual([
      ["paid", { orderId: "o-3", cents: 7 }],
    ])
  })

  it("re-publishing an id is a no-op, alone or in a batch, in the same or a later transaction", async () => {
    const { bus, schema } = await openBus()
    const id = uuidv7()
    const other = uuidv7()
    const first = await pgTx((c) => bus.publish(c, ev("orders", { v: 1 }, id)))
    expect(first.ids).toEqual([id])
    await pgTx(async (c) => {
      await bus.publish(c, ev("orders", { v: 2 }, id))
      await bus.publish(c, [
        ev("orders", { v: 3 }, id),
        ev("orders", { v: 4 }, other),
        ev("orders", { v: 5 }, other),
      ])
    })
    await sql.begin((tx) => bus.publish(tx, ev("orders", { v: 6 }, id)))
    const stored = await rows(schema)
    expect(stored.map((r) => [r.id, r.data])).toEqual([
      [id, { v: 1 }],
      [other, { v: 4 }],
    ])
  })

  it("sends one NOTIFY per transaction and address, however many publish calls, seen by a separate listener", async () => {
    const { bus, schema } = await openBus()
    const listener = await db.client("bus-test-listener")
    const heard: Array<{ channel: string; payload: string | undefined }> = []
    listener.on("notification", (n) => heard.push({ channel: n.channel, payload: n.payload }))
    const a = { tenant: "acme", channel: "a" }
    const b = { tenant: "acme", channel: "b" }
    await listener.query(`LISTEN ${addressChannel(schema, a)}`)
    await listener.query(`LISTEN ${addressChannel(schema, b)}`)
    await pgTx(async (c) => {
      await bus.publish(c, ev("a"))
      await bus.publish(c, [ev("a"), ev("a")])
      await bus.publish(c, [ev("a"), ev("b")])
      await bus.publish(c, ev("b"))
    })
    await sql.begin(async (tx) => {
      await bus.publish(tx, ev("b"))
      await bus.publish(tx, [ev("b"), ev("b")])
    })
    // A marker NOTIFY sent after both commits: once it arrives, every earlier one has.
    await db.pool.query(`SELECT pg_notify('${addressChannel(schema, a)}', 'marker')`)
    await eventually(() => (heard.some((h) => h.payload === "marker") ? true : undefined), 5_000)
    const count = (address: { tenant: string; channel: string }) =>
      heard.filter((h) => h.channel === addressChannel(schema, address) && h.payload !== "marker").length
    expect(count(a)).toBe(1)
    expect(count(b)).toBe(2)
    expect((await rows(schema)).length).toBe(9)
  })

  it("keeps the append prepared on the caller's connection, and sends it unnamed with prepare: false", async () => {
    const prepared = async (c: pg.PoolClient) =>
      (await c.query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'bus_append%'")).rows.length
    const c = await db.client("bus-test-prepare")
    const named = await openBus()
    await c.query("BEGIN")
    await named.bus.publish(c, ev("p"))
    await named.bus.publish(c, [ev("p"), ev("q")])
    expect(await prepared(c as unknown as pg.PoolClient)).toBe(2)
    await c.query("COMMIT")
    const c2 = await db.client("bus-test-unprepared")
    const unnamed = await openBus(false)
    await c2.query("BEGIN")
    await unnamed.bus.publish(c2, [ev("p"), ev("q")])
    expect(await prepared(c2 as unknown as pg.PoolClient)).toBe(0)
    await c2.query("COMMIT")
    expect((await rows(named.schema)).length).toBe(3)
    expect((await rows(unnamed.schema)).length).toBe(2)
  })
})
