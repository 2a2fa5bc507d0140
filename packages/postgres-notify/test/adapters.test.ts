import type { Envelope } from "@bus/core/adapter"
import { PgClient } from "@effect/sql-pg"
import { PrismaPg } from "@prisma/adapter-pg"
import { sql as dsql } from "drizzle-orm"
import { drizzle } from "drizzle-orm/node-postgres"
import { Effect, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { Kysely, sql as ksql, PostgresDialect } from "kysely"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { PrismaClient } from "./prisma/generated/client.js"
import { event, startDb, type TestDb } from "./support/db.js"
import { failure, run } from "./support/run.js"

/**
 * One test per ORM / query builder: publish inside its transaction next to a business
 * row; the commit makes both visible, a rollback neither, and the non-transaction handle
 * is refused with NotInTransaction before anything is written.
 */

let db: TestDb
let handle: PostgresOutboxHandle
let s: PostgresOutboxService
let appPool: pg.Pool
const address = { tenant: "acme", channel: "orders" }

beforeAll(async () => {
  db = await startDb()
  handle = await createPostgresOutboxStore({
    pool: db.pool,
    schema: await db.freshSchema(),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    pressure: false,
  })
  s = handle.store
  await db.pool.query(`CREATE TABLE "${s.schema}".orders (id text PRIMARY KEY, via text NOT NULL)`)
  await db.pool.query(`CREATE TABLE public.prisma_orders (id serial PRIMARY KEY, note text NOT NULL)`)
  appPool = new pg.Pool({ connectionString: db.url, application_name: "bus-test-orm", max: 4 })
  appPool.on("error", () => {})
})

afterAll(async () => {
  await handle?.close()
  await appPool?.end().catch(() => {})
  await db?.close()
})

const orderRow = (via: string) =>
  `INSERT INTO "${s.schema}".orders (id, via) VALUES ('${via}-' || gen_random_uuid(), '${via}')`

/** Event ids in the outbox, and business rows written through `via`. */
const seen = async (via: string) => {
  const page = await run(s.read(address, "beginning", 1_000))
  const orders = await db.pool.query(`SELECT count(*)::int AS n FROM "${s.schema}".orders WHERE via = $1`, [
    via,
  ])
  return { ids: new Set(page.events.map((e) => e.id)), orders: orders.rows[0].n as number }
}

/** Runs the three checks for one driver. */
const contract = async (
  via: string,
  options: {
    readonly commit: (events: ReadonlyArray<Envelope>) => Promise<void>
    readonly rollback: (events: ReadonlyArray<Envelope>) => Promise<void>
    readonly outside: (events: ReadonlyArray<Envelope>) => Promise<{ _tag: string; message: string }>
    readonly message: RegExp
  },
) => {
  const committed = [event("acme", "orders", { via, n: 1 }), event("acme", "orders", { via, n: 2 })]
  await options.commit(committed)
  let now = await seen(via)
  expect(committed.every((e) => now.ids.has(e.id))).toBe(true)
  expect(now.orders).toBe(1)
  const page = await run(s.read(address, "beginning", 1_000))
  expect(page.events.filter((e) => committed.some((c) => c.id === e.id)).map((e) => e.data)).toEqual([
    { via, n: 1 },
    { via, n: 2 },
  ])

  const rolledBack = [event("acme", "orders", { via, n: 3 })]
  await options.rollback(rolledBack)
  now = await seen(via)
  expect(now.ids.has(rolledBack[0]!.id)).toBe(false)
  expect(now.orders).toBe(1)

  const refused = [event("acme", "orders", { via, n: 4 })]
  const error = await options.outside(refused)
  expect(error._tag).toBe("NotInTransaction")
  expect(error.message).toMatch(options.message)
  now = await seen(via)
  expect(now.ids.has(refused[0]!.id)).toBe(false)
}

class Boom extends Error {}

describe("transaction adapters", () => {
  it("Kysely: trx of db.transaction().execute(), controlled transactions; the Kysely instance is refused", async () => {
    const kdb = new Kysely<Record<string, never>>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: db.url, max: 2 }) }),
    })
    try {
      await contract("kysely", {
        commit: (events) =>
          kdb.transaction().execute(async (trx) => {
            await ksql.raw(orderRow("kysely")).execute(trx)
            await run(s.append(trx, events))
          }),
        rollback: async (events) => {
          await expect(
            kdb.transaction().execute(async (trx) => {
              await ksql.raw(orderRow("kysely")).execute(trx)
              await run(s.append(trx, events))
              throw new Boom("rollback")
            }),
          ).rejects.toThrow(Boom)
        },
        outside: (events) => failure(s.append(kdb, events)),
        message: /db\.transaction\(\)\.execute\(async \(trx\)/,
      })
      // A controlled transaction works until it commits, and is refused after.
      const trx = await kdb.startTransaction().execute()
      const e = event("acme", "orders", { via: "kysely-controlled" })
      await run(s.append(trx, [e]))
      await trx.commit().execute()
      expect((await seen("none")).ids.has(e.id)).toBe(true)
      const after = await failure(s.append(trx, [event("acme", "orders")]))
      expect(after._tag).toBe("NotInTransaction")
    } finally {
      await kdb.destroy()
    }
  })

  it("Drizzle (node-postgres): tx of db.transaction(); the db is refused", async () => {
    const ddb = drizzle({ client: appPool })
    await contract("drizzle", {
      commit: (events) =>
        ddb.transaction(async (tx) => {
          await tx.execute(dsql.raw(orderRow("drizzle")))
          await run(s.append(tx, events))
        }),
      rollback: async (events) => {
        await expect(
          ddb.transaction(async (tx) => {
            await tx.execute(dsql.raw(orderRow("drizzle")))
            await run(s.append(tx, events))
            throw new Boom("rollback")
          }),
        ).rejects.toThrow(Boom)
      },
      outside: (events) => failure(s.append(ddb, events)),
      message: /db\.transaction\(async \(tx\)/,
    })
    // Nested transactions (savepoints) are inside the outer one.
    const e = event("acme", "orders", { via: "drizzle-nested" })
    await ddb.transaction(async (tx) => {
      await tx.transaction(async (inner) => {
        await run(s.append(inner, [e]))
      })
    })
    expect((await seen("none")).ids.has(e.id)).toBe(true)
  })

  it("Effect SqlClient (@effect/sql-pg): inside sql.withTransaction; outside it is refused", async () => {
    const layer = PgClient.layer({ url: Redacted.make(db.url), maxConnections: 2 })
    const program = Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* Effect.promise(() =>
        contract("effect-sql", {
          commit: (events) =>
            Effect.runPromise(
              sql.withTransaction(
                Effect.gen(function* () {
                  yield* sql.unsafe(orderRow("effect-sql"))
                  yield* s.append(sql, events)
                }),
              ),
            ),
          rollback: async (events) => {
            const exit = await Effect.runPromiseExit(
              sql.withTransaction(
                Effect.gen(function* () {
                  yield* sql.unsafe(orderRow("effect-sql"))
                  yield* s.append(sql, events)
                  return yield* Effect.fail(new Boom("rollback"))
                }),
              ),
            )
            expect(exit._tag).toBe("Failure")
          },
          outside: (events) => Effect.runPromise(Effect.flip(s.append(sql, events))),
          message: /sql\.withTransaction/,
        }),
      )
    })
    await Effect.runPromise(Effect.scoped(program.pipe(Effect.provide(layer))))
  })

  it("Prisma 7 (@prisma/adapter-pg, no Rust engine): tx of prisma.$transaction(); the client is refused", async () => {
    const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url }) })
    try {
      await contract("prisma", {
        commit: (events) =>
          prisma.$transaction(async (tx) => {
            await tx.$executeRawUnsafe(orderRow("prisma"))
            await tx.order.create({ data: { note: "paid" } })
            await run(s.append(tx, events))
          }),
        rollback: async (events) => {
          await expect(
            prisma.$transaction(async (tx) => {
              await tx.$executeRawUnsafe(orderRow("prisma"))
              await tx.order.create({ data: { note: "rolled back" } })
              await run(s.append(tx, events))
              throw new Boom("rollback")
            }),
          ).rejects.toThrow(Boom)
        },
        outside: (events) => failure(s.append(prisma, events)),
        message: /prisma\.\$transaction\(async \(tx\)/,
      })
      expect((await prisma.order.findMany()).map((o) => o.note)).toEqual(["paid"])
    } finally {
      await prisma.$disconnect()
    }
  })
})
