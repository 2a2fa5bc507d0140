import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { event, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

let db: TestDb
let sql: postgres.Sql
const handles: Array<PostgresOutboxHandle> = []
const address = { tenant: "acme", channel: "orders" }

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

beforeAll(async () => {
  db = await startDb()
  sql = postgres(db.url, {
    max: 2,
    onnotice: () => {},
    connection: { application_name: "bus-test-postgresjs" },
  })
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await sql?.end({ timeout: 5 })
  await db?.close()
})

describe("postgres.js transactions", () => {
  it("appends inside sql.begin: committed with it, gone with its rollback", async () => {
    const s = await store()
    const kept = event("acme", "orders", { big: "x".repeat(10_000), nested: { list: [1, "two", null] } })
    await sql.begin(async (tx) => {
      await tx`SELECT 1`
      await run(s.append(tx, [kept]))
    })
    await expect(
      sql.begin(async (tx) => {
        await run(s.append(tx, [event("acme", "orders")]))
        throw new Error("business failure")
      }),
    ).rejects.toThrow("business failure")
    const page = await run(s.read(address, "beginning", 10))
    expect(page.events.map(({ cursor: _c, ...e }) => e)).toEqual([kept])
  })

  it("works in a savepoint of the transaction", async () => {
    const s = await store()
    await sql.begin(async (tx) => {
      await tx.savepoint(async (sp) => {
        await run(s.append(sp, [event("acme", "orders")]))
      })
    })
    expect((await run(s.read(address, "beginning", 10))).events).toHaveLength(1)
  })

  it("refuses the root sql and a reserved connection outside BEGIN", async () => {
    const s = await store()
    expect(await failure(s.append(sql, [event("acme", "orders")]))).toMatchObject({
      _tag: "NotInTransaction",
    })
    const reserved = await sql.reserve()
    try {
      expect(await failure(s.append(reserved, [event("acme", "orders")]))).toMatchObject({
        _tag: "NotInTransaction",
      })
      await reserved`BEGIN`
      await run(s.append(reserved, [event("acme", "orders")]))
      await reserved`COMMIT`
    } finally {
      reserved.release()
    }
    expect((await run(s.read(address, "beginning", 10))).events).toHaveLength(1)
  })
})
