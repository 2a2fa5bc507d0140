import { type Bus, createBus } from "@bus/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { replayDeadLetters } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { eventually, inTransaction, startDb, type TestDb } from "./support/db.js"

/**
 * Replaying dead letters: a consumer group gives up on an event (its handler throws), the
 * operator fixes the cause and replays it by id. The group that gave up handles it again;
 * a group that handled it does not; ids that are not dead letters change nothing.
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

const openBus = async (schema: string): Promise<Bus> => {
  const pgn = postgresOutbox({
    connectionString: db.url,
    schema,
    migrate: false,
    pressure: false,
  })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  closers.push(() => bus.close())
  return bus
}

describe("replayDeadLetters", () => {
  it("hands a dead-lettered event back to the group that gave up on it, with its id, and to no one else", async () => {
    const schema = await db.freshSchema()
    const bus = await openBus(schema)
    let broken = true
    const billing: Array<string> = []
    const audit: Array<string> = []
    const c1 = bus.consume({ tenant: "acme", channel: "orders", group: "billing", maxAttempts: 2 }, (e) => {
      if (broken && (e.data as { n: number }).n === 1) throw new Error("card service down")
      billing.push(e.id)
    })
    const c2 = bus.consume({ tenant: "acme", channel: "orders", group: "audit" }, (e) => {
      audit.push(e.id)
    })
    closers.push(
      () => c1.close(),
      () => c2.close(),
    )
    const ids: Array<string> = []
    for (let n = 0; n < 3; n++)
      ids.push(
        ...(
          await inTransaction(db.pool, (c) =>
            bus.publish(c, { tenant: "acme", channel: "orders", type: "order.paid", data: { n } }),
          )
        ).ids,
      )
    await eventually(() => (billing.length === 2 && audit.length === 3 ? true : undefined), 20_000)
    const dead = await eventually(async () => {
      const { rows } = await db.pool.query(`SELECT event_id::text AS id, source FROM ${schema}.dead_letters`)
      return rows.length === 1 ? rows[0] : undefined
    }, 20_000)
    expect(dead).toEqual({ id: ids[1], source: "billing" })

    // A fresh member of audit (no memory of what it handled): it must skip the replay by the group's inbox.
    await c2.close()
    const c3 = bus.consume({ tenant: "acme", channel: "orders", group: "audit" }, (e) => {
      audit.push(e.id)
    })
    closers.push(() => c3.close())
    broken = false
    const unknown = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"
    const result = await replayDeadLetters({ pool: db.pool, schema }, [ids[1]!, unknown])
    expect(result).toEqual({
      replayed: [{ id: ids[1], tenant: "acme", channel: "orders", source: "billing" }],
      missing: [unknown],
    })
    // Bounded generously: the file has its own Postgres, but on a loaded two-core CI machine a
    // missed wake-up is only caught by the fallback poll (10 s).
    await eventually(() => (billing.length === 3 ? true : undefined), 60_000)
    await new Promise((r) => setTimeout(r, 500))
    expect(billing).toEqual([ids[0], ids[2], ids[1]])
    expect(audit).toEqual(ids)
    const left = await db.pool.query(
      `SELECT (SELECT count(*)::int FROM ${schema}.dead_letters) AS dead, (SELECT count(*)::int FROM ${schema}.outbox WHERE id = $1) AS copies`,
      [ids[1]],
    )
    expect(left.rows[0]).toEqual({ dead: 0, copies: 1 })
    // Replaying again: nothing left to replay.
    expect(await replayDeadLetters({ connectionString: db.url, schema }, [ids[1]!])).toEqual({
      replayed: [],
      missing: [ids[1]],
    })
    await expect(replayDeadLetters({ pool: db.pool, schema }, ["nope"])).rejects.toThrow(/not event ids/)
  }, 150_000)

  it("hands a replayed event to a group member and a subscriber that read the original in their catch-up, while the feed is live", async () => {
    // A member or subscriber that joins a live feed remembers the events its catch-up read
    // (the seam), to skip them when the feed's pages repeat them. A replay brings an event
    // back with its id: the seam must not take it for the catch-up's copy. The order is
    // forced: the feed holds the original before either joins, their catch-ups read it, no
    // other event follows, then the replay commits.
    const schema = await db.freshSchema()
    const bus = await openBus(schema)
    const orders = { tenant: "acme", channel: "orders" }
    const publish = async (n: number) =>
      (await inTransaction(db.pool, (c) => bus.publish(c, { ...orders, type: "order.paid", data: { n } })))
        .ids[0]!
    const collect = (from: string) => {
      const sub = bus.subscribe({ ...orders, from })
      closers.push(() => sub.close())
      const ids: Array<string> = []
      const done = (async () => {
        for await (const e of sub) ids.push(e.id)
      })()
      return { ids, close: () => sub.close().then(() => done) }
    }
    // Keeps the address's feed live the whole time (from the beginning of a fresh schema: it
    // cannot start after the publishes below).
    const early = collect("beginning")
    // The group's position is set before the event: its next member catches up over it.
    const billing: Array<string> = []
    const c0 = bus.consume({ ...orders, group: "billing" }, (e) => {
      billing.push(e.id)
    })
    closers.push(() => c0.close())
    const warm = await publish(0)
    await eventually(() => (billing.length === 1 ? true : undefined), 20_000)
    await c0.close()
    const id = await publish(1)
    await eventually(() => (early.ids.length === 2 ? true : undefined), 20_000)
    let broken = true
    const c1 = bus.consume({ ...orders, group: "billing", maxAttempts: 1 }, (e) => {
      if (broken) throw new Error("card service down")
      billing.push(e.id)
    })
    closers.push(() => c1.close())
    await eventually(async () => {
      const { rows } = await db.pool.query(`SELECT 1 FROM ${schema}.dead_letters WHERE event_id = $1`, [id])
      return rows.length === 1 ? true : undefined
    }, 20_000)
    const late = collect("beginning")
    await eventually(() => (late.ids.length === 2 ? true : undefined), 20_000)
    broken = false
    const result = await replayDeadLetters({ pool: db.pool, schema }, [id])
    expect(result.replayed.map((r) => r.id)).toEqual([id])
    await eventually(() => (early.ids.length === 3 ? true : undefined), 20_000)
    // With no event after it, only the replay itself can reach them.
    await eventually(() => (billing.length === 2 ? true : undefined), 20_000)
    await eventually(() => (late.ids.length === 3 ? true : undefined), 20_000)
    expect(billing).toEqual([warm, id])
    expect(late.ids).toEqual([warm, id, id])
    expect(early.ids).toEqual([warm, id, id])
    await c1.close()
    await early.close()
    await late.close()
  }, 90_000)
})
