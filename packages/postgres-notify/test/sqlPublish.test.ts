import { type Bus, createBus, type DeliveredEvent } from "@bus/core"
import { isUuidv7 } from "@bus/core/adapter"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { addressChannel } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { eventually, inTransaction, startDb, type TestDb } from "./support/db.js"

/**
 * Publishing from SQL (`<schema>.publish(…)` and the publish trigger), tried as a user of
 * psql or of another language would: plain SQL on a separate pg connection, the events
 * read back through the SDK's subscriber, and the wake-ups seen by a separate LISTEN.
 */

let db: TestDb
const closers: Array<() => Promise<unknown>> = []

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => {})
  await db?.close()
})

const openBus = async (
  transport: "postgres-notify" | "nats" = "postgres-notify",
): Promise<{ bus: Bus; schema: string }> => {
  const schema = await db.freshSchema()
  const pgn = postgresOutbox({
    connectionString: db.url,
    schema,
    migrate: false,
    pressure: false,
    // The notify mode the bus would pick for this transport; only that is under test here.
    notify: transport === "postgres-notify" ? "addresses" : "none",
  })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  closers.push(() => bus.close())
  return { bus, schema }
}

/** Collects a subscription's events until closed. */
const follow = (bus: Bus, tenant: string, channel: string) => {
  const got: Array<DeliveredEvent> = []
  const sub = bus.subscribe({ tenant, channel, from: "beginning" })
  const reading = (async () => {
    for await (const e of sub) got.push(e)
  })()
  closers.push(async () => {
    await sub.close()
    await reading
  })
  return got
}

const sqlError = async (client: pg.ClientBase, text: string, params: ReadonlyArray<unknown> = []) => {
  try {
    await client.query(text, params as unknown[])
  } catch (e) {
    return e as { code?: string; message: string }
  }
  throw new Error(`expected ${text} to fail`)
}

describe("<schema>.publish", () => {
  it("appends an event that subscribers receive like an SDK event, with a UUIDv7 id, in the caller's transaction", async () => {
    const { bus, schema } = await openBus()
    const got = follow(bus, "acme", "orders")
    const ids = await inTransaction(db.pool, async (c) => {
      const a = await c.query<{ id: string }>(
        `SELECT ${schema}.publish('acme', 'orders', 'order.paid', $1) AS id`,
        [JSON.stringify({ orderId: 42, lines: [{ sku: "a", n: 2 }] })],
      )
      const b = await c.query<{ id: string }>(
        `SELECT ${schema}.publish(tenant => 'acme', channel => 'orders', type => 'order.shipped', headers => '{"traceparent":"00-abc"}') AS id`,
      )
      return [a.rows[0]!.id, b.rows[0]!.id]
    })
    await eventually(() => (got.length >= 2 ? true : undefined), 10_000)
    expect(got.map((e) => e.id)).toEqual(ids)
    expect(ids.every((id) => isUuidv7(id))).toBe(true)
    expect(got[0]).toMatchObject({
      tenant: "acme",
      channel: "orders",
      type: "order.paid",
      data: { orderId: 42, lines: [{ sku: "a", n: 2 }] },
    })
    expect(got[1]).toMatchObject({ type: "order.shipped", data: null, headers: { traceparent: "00-abc" } })
    expect(Date.parse(got[0]!.time)).toBeGreaterThan(Date.now() - 60_000)
  })

  it("rolls back with the caller's transaction", async () => {
    const { bus, schema } = await openBus()
    const got = follow(bus, "acme", "rollback")
    const client = await db.pool.connect()
    try {
      await client.query("BEGIN")
      await client.query(`SELECT ${schema}.publish('acme', 'rollback', 'x.rolled-back')`)
      await client.query("ROLLBACK")
    } finally {
      client.release()
    }
    await inTransaction(db.pool, (c) => c.query(`SELECT ${schema}.publish('acme', 'rollback', 'x.kept')`))
    await eventually(() => (got.length >= 1 ? true : undefined), 10_000)
    await new Promise((r) => setTimeout(r, 300))
    expect(got.map((e) => e.type)).toEqual(["x.kept"])
    const { rows } = await db.pool.query(
      `SELECT count(*)::int AS n FROM ${schema}.outbox WHERE channel = 'rollback'`,
    )
    expect(rows[0].n).toBe(1)
  })

  it("refuses bad names, types, ids, headers and oversize events with a clear error, writing nothing", async () => {
    const { schema } = await openBus()
    const client = await db.client()
    const cases: Array<[string, ReadonlyArray<unknown>, string, RegExp]> = [
      [`SELECT ${schema}.publish('ac me', 'orders', 't')`, [], "22023", /tenant "ac me" contains " "/],
      [`SELECT ${schema}.publish('acme', '', 't')`, [], "22023", /channel must not be empty/],
      [`SELECT ${schema}.publish('acme', '-x', 't')`, [], "22023", /must start with a letter or digit/],
      [
        `SELECT ${schema}.publish('acme', repeat('c', 65), 't')`,
        [],
        "22023",
        /65 characters; the limit is 64/,
      ],
      [
        `SELECT ${schema}.publish('acme', 'orders', '')`,
        [],
        "22023",
        /event type must be a non-empty string/,
      ],
      [
        `SELECT ${schema}.publish('acme', 'orders', 't', 'null', '{"n": 1}')`,
        [],
        "22023",
        /headers must be an object of strings/,
      ],
      [
        `SELECT ${schema}.publish('acme', 'orders', 't', 'null', '{}', gen_random_uuid())`,
        [],
        "22023",
        /id must be a UUIDv7/,
      ],
      [
        `SELECT ${schema}.publish('acme', 'orders', 't', jsonb_build_object('p', repeat('x', 1100000)))`,
        [],
        "54000",
        /event is \d+ bytes encoded; the limit is 1048576/,
      ],
    ]
    for (const [text, params, code, message] of cases) {
      const error = await sqlError(client, text, params)
      expect(error.code, text).toBe(code)
      expect(error.message, text).toMatch(message)
    }
    const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM ${schema}.outbox`)
    expect(rows[0].n).toBe(0)
  })

  it("SDK and SQL publishers on one address make one stream in commit order", async () => {
    const { bus, schema } = await openBus()
    const got = follow(bus, "acme", "mixed")
    const committed: Array<string> = []
    for (let i = 0; i < 20; i++) {
      const id = await inTransaction(db.pool, async (c) => {
        if (i % 2 === 0) {
          const r = await bus.publish(c, { tenant: "acme", channel: "mixed", type: "from.sdk", data: { i } })
          return r.ids[0]!
        }
        const r = await c.query<{ id: string }>(
          `SELECT ${schema}.publish('acme', 'mixed', 'from.sql', $1) AS id`,
          [JSON.stringify({ i })],
        )
        return r.rows[0]!.id
      })
      committed.push(id)
    }
    await eventually(() => (got.length >= 20 ? true : undefined), 10_000)
    expect(got.map((e) => e.id)).toEqual(committed)
    expect(got.map((e) => (e.data as { i: number }).i)).toEqual(Array.from({ length: 20 }, (_, i) => i))
  })

  it("wakes readers as the bus's notify mode says: one NOTIFY per address per transaction on postgres-notify, none on a broker", async () => {
    const listener = await db.client("bus-test-listen")
    const received: Array<{ channel: string; payload: string | undefined }> = []
    listener.on("notification", (n) => received.push({ channel: n.channel, payload: n.payload }))

    const pgBus = await openBus("postgres-notify")
    const pgChannel = addressChannel(pgBus.schema, { tenant: "acme", channel: "wake" })
    await listener.query(`LISTEN ${pgChannel}`)
    await inTransaction(db.pool, async (c) => {
      for (let i = 0; i < 3; i++) await c.query(`SELECT ${pgBus.schema}.publish('acme', 'wake', 'x.y')`)
    })
    await eventually(() => (received.length >= 1 ? true : undefined), 5_000)

    const brokerBus = await openBus("nats")
    const brokerChannel = addressChannel(brokerBus.schema, { tenant: "acme", channel: "wake" })
    await listener.query(`LISTEN ${brokerChannel}`)
    await inTransaction(db.pool, (c) => c.query(`SELECT ${brokerBus.schema}.publish('acme', 'wake', 'x.y')`))
    await new Promise((r) => setTimeout(r, 500))
    expect(received).toEqual([{ channel: pgChannel, payload: "1:acme:wake" }])
    const modes = await db.pool.query(
      `SELECT (SELECT sql_notify FROM ${pgBus.schema}.meta) AS pg, (SELECT sql_notify FROM ${brokerBus.schema}.meta) AS broker`,
    )
    expect(modes.rows[0]).toEqual({ pg: "addresses", broker: "none" })
  })
})

describe("the publish trigger", () => {
  it("publishes each INSERT, UPDATE and DELETE of a table, tenant from a column; rolled-back rows publish nothing", async () => {
    const { bus, schema } = await openBus()
    const table = `${schema}_orders`
    await db.pool.query(
      `CREATE TABLE public.${table} (id serial PRIMARY KEY, account text NOT NULL, total int, note text)`,
    )
    const attached = await db.pool.query(
      `SELECT ${schema}.attach_publish_trigger('public.${table}', 'account', 'orders', 'order') AS name`,
    )
    expect(attached.rows[0].name).toBe("bus_publish_orders")
    const acme = follow(bus, "acme", "orders")
    const globex = follow(bus, "globex", "orders")

    await db.pool.query(`INSERT INTO public.${table} (account, total) VALUES ('acme', 10), ('globex', 20)`)
    await db.pool.query(`UPDATE public.${table} SET total = 11 WHERE account = 'acme'`)
    const client = await db.pool.connect()
    try {
      await client.query("BEGIN")
      await client.query(`INSERT INTO public.${table} (account, total) VALUES ('acme', 99)`)
      await client.query("ROLLBACK")
    } finally {
      client.release()
    }
    await db.pool.query(`DELETE FROM public.${table} WHERE account = 'acme'`)

    await eventually(() => (acme.length >= 3 && globex.length >= 1 ? true : undefined), 10_000)
    await new Promise((r) => setTimeout(r, 300))
    expect(acme.map((e) => [e.type, (e.data as { total: number }).total])).toEqual([
      ["order.insert", 10],
      ["order.update", 11],
      ["order.delete", 11],
    ])
    expect(acme[0]!.data).toMatchObject({ id: 1, account: "acme", total: 10, note: null })
    expect(globex.map((e) => e.type)).toEqual(["order.insert"])
  })

  it("sends chosen columns or a pointer for wide rows; refuses bad arguments when attaching; a bad tenant value aborts the write", async () => {
    const { bus, schema } = await openBus()
    const table = `${schema}_docs`
    await db.pool.query(
      `CREATE TABLE public.${table} (id int PRIMARY KEY, tenant text, title text, body text)`,
    )
    await db.pool.query(
      `SELECT ${schema}.attach_publish_trigger('public.${table}', 'tenant', 'titles', 'doc', 'columns:id,title', ARRAY['INSERT'])`,
    )
    await db.pool.query(
      `SELECT ${schema}.attach_publish_trigger('public.${table}', 'tenant', 'docs', 'doc', 'key:id')`,
    )
    const titles = follow(bus, "acme", "titles")
    const docs = follow(bus, "acme", "docs")
    await db.pool.query(`INSERT INTO public.${table} VALUES (7, 'acme', 'Hello', repeat('long ', 1000))`)
    await db.pool.query(`UPDATE public.${table} SET title = 'Hi' WHERE id = 7`)
    await eventually(() => (titles.length >= 1 && docs.length >= 2 ? true : undefined), 10_000)
    await new Promise((r) => setTimeout(r, 300))
    expect(titles.map((e) => e.data)).toEqual([{ id: 7, title: "Hello" }])
    expect(docs.map((e) => [e.type, e.data])).toEqual([
      ["doc.insert", { table: `public.${table}`, key: { id: 7 } }],
      ["doc.update", { table: `public.${table}`, key: { id: 7 } }],
    ])

    const client = await db.client()
    const missing = await sqlError(
      client,
      `SELECT ${schema}.attach_publish_trigger('public.${table}', 'nope', 'x', 'doc')`,
    )
    expect(missing.message).toMatch(/has no column nope/)
    const badPayload = await sqlError(
      client,
      `SELECT ${schema}.attach_publish_trigger('public.${table}', 'tenant', 'x', 'doc', 'everything')`,
    )
    expect(badPayload.message).toMatch(/payload must be 'row', 'columns:a,b' or 'key:column'/)
    const badTenant = await sqlError(client, `INSERT INTO public.${table} VALUES (8, 'not ok', 't', 'b')`)
    expect(badTenant.message).toMatch(/tenant "not ok" contains " "/)
    const rows = await db.pool.query(`SELECT count(*)::int AS n FROM public.${table}`)
    expect(rows.rows[0].n).toBe(1)

    expect(
      (await db.pool.query(`SELECT ${schema}.detach_publish_trigger('public.${table}', 'docs') AS d`)).rows[0]
        .d,
    ).toBe(true)
    await db.pool.query(`INSERT INTO public.${table} VALUES (9, 'acme', 'Third', 'b')`)
    await eventually(() => (titles.length >= 2 ? true : undefined), 10_000)
    await new Promise((r) => setTimeout(r, 300))
    expect(docs).toHaveLength(2)
  })
})
