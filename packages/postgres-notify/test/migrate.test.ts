import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  createPostgresOutboxStore,
  latestVersion,
  migrationSql,
  rotateEpoch,
  validateSchemaName,
} from "../src/adapter.js"
import { migrate } from "../src/index.js"
import { startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

let db: TestDb

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await db?.close()
})

const tables = async (schema: string) =>
  (
    await db.pool.query(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
      [schema],
    )
  ).rows.map((r) => r.table_name)

describe("migrate", () => {
  it("creates the schema once and is a no-op after", async () => {
    const first = await migrate({ connectionString: db.url, schema: "bus" })
    expect(first).toMatchObject({ schema: "bus", applied: [1, 2, 3, 4, 5, 6], version: latestVersion })
    const second = await migrate({ pool: db.pool, schema: "bus" })
    expect(second).toMatchObject({ applied: [], version: latestVersion, epoch: first.epoch })
    expect(await tables("bus")).toEqual([
      "consumer_groups",
      "dead_letters",
      "group_inbox",
      "group_leases",
      "group_members",
      "meta",
      "outbox",
      "relay_members",
      "relay_partitions",
      "schema_migrations",
    ])
  })

  it("is safe when many processes migrate at once", async () => {
    const results = await Promise.all(
      Array.from({ length: 6 }, () => migrate({ connectionString: db.url, schema: "racing" })),
    )
    expect(results.filter((r) => r.applied.length > 0)).toHaveLength(1)
    expect(new Set(results.map((r) => r.epoch)).size).toBe(1)
    expect(results.every((r) => r.version === latestVersion)).toBe(true)
  })

  it("accepts only lower-case identifier schema names", async () => {
    for (const bad of ["Bus", "a;drop table x", 'a"b', "1abc", "pg_bus", "", "x".repeat(64), "a-b", "a b"]) {
      expect(typeof validateSchemaName(bad), bad).toBe("object")
      await expect(migrate({ pool: db.pool, schema: bad })).rejects.toMatchObject({ _tag: "ConfigError" })
    }
    expect(validateSchemaName("bus_2")).toBe("bus_2")
  })

  it("ships the same schema as one SQL script for other migration tools", async () => {
    const c = await db.client()
    await c.query(migrationSql("scripted"))
    expect(await migrate({ pool: db.pool, schema: "scripted" })).toMatchObject({
      applied: [],
      version: latestVersion,
    })
    expect(await tables("scripted")).toEqual(await tables("bus"))
  })

  it("makes a store refuse to start on an unmigrated schema when migration is off", async () => {
    await expect(
      createPostgresOutboxStore({ pool: db.pool, schema: "nothing_here", migrate: false, listen: false }),
    ).rejects.toMatchObject({ _tag: "ConfigError" })
  })

  it("migrates at store start by default, and a rotated epoch makes old cursors foreign", async () => {
    const h = await createPostgresOutboxStore({ pool: db.pool, schema: "autostart", listen: false })
    try {
      const address = { tenant: "acme", channel: "orders" }
      const before = await run(h.store.head(address))
      await rotateEpoch({ pool: db.pool, schema: "autostart" })
      expect(await failure(h.store.read(address, before, 10))).toMatchObject({
        _tag: "CursorInvalid",
        reason: "foreign",
      })
      const after = await run(h.store.head(address))
      expect((await run(h.store.read(address, after, 10))).events).toHaveLength(0)
    } finally {
      await h.close()
    }
  })

  it("reports a clear error when the server is unreachable", async () => {
    const pool = new pg.Pool({
      connectionString: "postgres://nobody@127.0.0.1:1/none",
      connectionTimeoutMillis: 1000,
    })
    try {
      await expect(migrate({ pool })).rejects.toMatchObject({ _tag: "TransportUnavailable" })
    } finally {
      await pool.end()
    }
  })
})
