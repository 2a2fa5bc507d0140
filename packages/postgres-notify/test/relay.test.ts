import type { DeliveredEvent } from "@bus/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, openScope, run } from "./support/run.js"

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []
const address = { tenant: "acme", channel: "orders" }

const store = async (options: { groupLeaseMs?: number } = {}): Promise<PostgresOutboxService> => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: await db.freshSchema(),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    ...options,
  })
  handles.push(h)
  return h.store
}

const seed = async (s: PostgresOutboxService, n: number) => {
  const events = Array.from({ length: n }, (_, i) => event("acme", "orders", { i }))
  await inTransaction(db.pool, (c) => run(s.append(c, events)))
  return events
}

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

describe("dead letters", () => {
  it("records dead letters from consumer groups, newest first", async () => {
    const s = await store()
    const [a, b] = await seed(s, 2)
    await run(
      s.deadLetter({
        event: a!,
        reason: "handler gave up",
        source: "billing",
        attempts: 5,
        at: "2026-01-01T00:00:00.000Z",
      }),
    )
    await run(
      s.deadLetter({
        event: b!,
        reason: "bad data",
        source: "billing",
        attempts: 1,
        at: new Date().toISOString(),
      }),
    )
    const letters = await run(s.deadLetters(1))
    expect(letters).toHaveLength(1)
    expect(letters[0]).toMatchObject({ reason: "bad data", source: "billing", attempts: 1 })
    expect((await run(s.deadLetters(10)))[1]).toMatchObject({ at: "2026-01-01T00:00:00.000Z", event: a })
  })
})

describe("consumer groups", () => {
  it("lets one member hold a group at a time and hands the committed cursor to the next", async () => {
    // A lease long enough that a busy test machine never misses a renewal by accident.
    const s = await store({ groupLeaseMs: 1_500 })
    const [e] = await seed(s, 1)
    const page = await run(s.read(address, "beginning", 10))
    const cursor = (page.events[0] as DeliveredEvent).cursor
    expect(page.events[0]!.id).toBe(e!.id)

    const a = openScope()
    const claimA = await a.use(s.claimGroup(address, "billing"))
    expect(claimA.cursor).toBe("beginning")

    const b = openScope()
    let claimedB: { cursor: string } | undefined
    const waiting = b.use(s.claimGroup(address, "billing")).then((c) => {
      claimedB = c
      return c
    })
    // B waits while A holds the claim, across several lease renewals.
    await new Promise((r) => setTimeout(r, 2_000))
    expect(claimedB).toBeUndefined()
    await run(claimA.commit(cursor))
    await a.close()
    const claimB = await waiting
    expect(claimB.cursor).toBe(cursor)

    // Another group of the same address is independent.
    const c = openScope()
    expect((await c.use(s.claimGroup(address, "shipping"))).cursor).toBe("beginning")
    await c.close()
    await b.close()
    const bad = openScope()
    await expect(bad.use(s.claimGroup(address, "bad group"))).rejects.toMatchObject({ _tag: "InvalidName" })
    await bad.close()
  })

  it("fails commits of a member whose claim was taken over", async () => {
    const s = await store({ groupLeaseMs: 60_000 })
    const a = openScope()
    const claim = await a.use(s.claimGroup(address, "audit"))
    // Simulate a member that stalled past its lease and was replaced.
    await db.pool.query(
      `UPDATE "${s.schema}".consumer_groups SET owner = 'someone-else', lease_until = now() + interval '1 minute'`,
    )
    const err = await failure(claim.commit("beginning"))
    expect(err).toMatchObject({ _tag: "TransportFailure", retryable: false })
    await a.close()
    const row = await db.pool.query(`SELECT owner FROM "${s.schema}".consumer_groups`)
    expect(row.rows[0].owner).toBe("someone-else")
  })

  it("takes over a group whose holder died (lease ran out)", async () => {
    const s = await store({ groupLeaseMs: 200 })
    await db.pool.query(
      `INSERT INTO "${s.schema}".consumer_groups (tenant, channel, group_name, cursor, owner, lease_until)
       VALUES ('acme', 'orders', 'dead', 'pg1:x', 'crashed-process', now() + interval '300 milliseconds')`,
    )
    const scope = openScope()
    const started = Date.now()
    const claim = await scope.use(s.claimGroup(address, "dead"))
    expect(claim.cursor).toBe("pg1:x")
    expect(Date.now() - started).toBeGreaterThanOrEqual(200)
    await scope.close()
    await eventually(async () => {
      const row = await db.pool.query(
        `SELECT owner FROM "${s.schema}".consumer_groups WHERE group_name = 'dead'`,
      )
      return row.rows[0].owner === null ? true : undefined
    })
  })
})
