import type { GroupMembership } from "@bus/core/adapter"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { event, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

/**
 * Membership of consumer groups across tenants (schema v6) against real Postgres: who is
 * live, who holds which address, what happens when a member leaves or stops renewing, and
 * what listing a channel's tenants costs on a large outbox.
 */

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []
const key = { channel: "orders", group: "billing" }

const store = async (): Promise<PostgresOutboxService> => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: await db.freshSchema(),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
  })
  handles.push(h)
  return h.store
}

const membersOf = (s: PostgresOutboxService): GroupMembership => {
  if (s.members === undefined) throw new Error("the Postgres outbox has no membership")
  return s.members
}

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

describe('group membership (tenant "*")', () => {
  it("members see each other; an address lease has one holder; leave frees it at once", async () => {
    const m = membersOf(await store())
    expect(await run(m.heartbeat(key, "a", 10_000))).toEqual({ others: [], held: [] })
    expect((await run(m.heartbeat(key, "b", 10_000))).others).toEqual(["a"])
    // Another group or channel is another membership.
    expect((await run(m.heartbeat({ ...key, group: "audit" }, "c", 10_000))).others).toEqual([])

    expect([...(await run(m.lease(key, "a", ["t2", "t1"])))].sort()).toEqual(["t1", "t2"])
    // Held by a live member: b takes only the free one.
    expect(await run(m.lease(key, "b", ["t1", "t3"]))).toEqual(["t3"])
    // Taking again what one holds is fine (idempotent).
    expect([...(await run(m.lease(key, "a", ["t1", "t2"])))].sort()).toEqual(["t1", "t2"])
    expect([...(await run(m.heartbeat(key, "a", 10_000))).held].sort()).toEqual(["t1", "t2"])

    await run(m.release(key, "a", ["t2"]))
    expect(await run(m.lease(key, "b", ["t2"]))).toEqual(["t2"])

    await run(m.leave(key, "a"))
    const b = await run(m.heartbeat(key, "b", 10_000))
    expect(b.others).toEqual([])
    expect([...b.held].sort()).toEqual(["t2", "t3"])
    expect(await run(m.lease(key, "b", ["t1"]))).toEqual(["t1"])
  })

  it("a member that stops renewing expires: its leases go to a live member; a member not live takes nothing", async () => {
    const m = membersOf(await store())
    await run(m.heartbeat(key, "dying", 300))
    expect(await run(m.lease(key, "dying", ["t1"]))).toEqual(["t1"])
    await run(m.heartbeat(key, "live", 10_000))
    expect(await run(m.lease(key, "live", ["t1"]))).toEqual([])
    await new Promise((r) => setTimeout(r, 400))
    // Not live any more: it cannot take (or keep taking) anything.
    expect(await run(m.lease(key, "dying", ["t2"]))).toEqual([])
    expect(await run(m.lease(key, "live", ["t1"]))).toEqual(["t1"])
    const beat = await run(m.heartbeat(key, "live", 10_000))
    expect(beat).toEqual({ others: [], held: ["t1"] })
    // A never-registered member takes nothing either.
    expect(await run(m.lease(key, "stranger", ["t9"]))).toEqual([])
  })

  it("two members racing for the same addresses: each address is taken by exactly one", async () => {
    const m = membersOf(await store())
    const tenants = Array.from({ length: 40 }, (_, i) => `t${i}`)
    await run(m.heartbeat(key, "a", 10_000))
    await run(m.heartbeat(key, "b", 10_000))
    const [a, b] = await Promise.all([run(m.lease(key, "a", tenants)), run(m.lease(key, "b", tenants))])
    expect([...a, ...b].sort()).toEqual([...tenants].sort())
    expect(a.filter((t) => b.includes(t))).toEqual([])
  })

  it("tenants(channel): the channel's tenants only, committed rows only; bad names are refused", async () => {
    const s = await store()
    const m = membersOf(s)
    await inTransaction(db.pool, (c) =>
      run(
        s.append(c, [
          event("acme", "orders"),
          event("acme", "invoices"),
          event("globex", "orders"),
          event("initech", "invoices"),
        ]),
      ),
    )
    await inTransaction(db.pool, async (c) => {
      await run(s.append(c, [event("umbrella", "orders")]))
      throw new Error("roll back")
    }).catch(() => undefined)
    expect([...(await run(m.tenants("orders")))].sort()).toEqual(["acme", "globex"])
    expect(await run(m.tenants("nothing"))).toEqual([])
    expect(await failure(m.tenants("*"))).toMatchObject({ _tag: "InvalidName", rule: "wildcard" })
    expect(await failure(m.heartbeat({ channel: "orders", group: "a b" }, "x", 1_000))).toMatchObject({
      _tag: "InvalidName",
      field: "group",
    })
  })

  it("tenants(channel) reads the index, not the rows: measured on 2,000 tenants × 3 channels × 10 rows", async () => {
    const s = await store()
    const m = membersOf(s)
    // Bulk rows straight into the table (the append path is not what is measured here).
    await db.pool.query(
      `INSERT INTO "${s.schema}".outbox (id, tenant, channel, type, data, event_time)
       SELECT gen_random_uuid(), 't' || (i % 2000), 'c' || (i % 3), 'x', 'null'::jsonb, now()
       FROM generate_series(1, 60000) i`,
    )
    await db.pool.query(`INSERT INTO "${s.schema}".outbox (id, tenant, channel, type, data, event_time)
       VALUES (gen_random_uuid(), 'newcomer', 'c9', 'x', 'null'::jsonb, now())`)
    await db.pool.query(`ANALYZE "${s.schema}".outbox`)
    const started = performance.now()
    const tenants = await run(m.tenants("c0"))
    const firstMs = performance.now() - started
    const again = performance.now()
    await run(m.tenants("c9"))
    const secondMs = performance.now() - again
    expect(tenants.length).toBe(2000)
    expect(await run(m.tenants("c9"))).toEqual(["newcomer"])
    const plan = await db.pool.query(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1 FROM "${s.schema}".outbox o WHERE o.tenant > 't5' ORDER BY tenant LIMIT 1`,
    )
    expect(JSON.stringify(plan.rows)).toContain("Index")
    console.log(
      `members: tenants(channel) over 60,001 rows of 2,001 tenants: ${firstMs.toFixed(1)} ms (2,000 found), ${secondMs.toFixed(1)} ms (1 found)`,
    )
  })
})
