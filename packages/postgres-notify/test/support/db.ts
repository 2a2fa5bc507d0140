import { createHash, randomBytes } from "node:crypto"
import type { Envelope } from "@bus/core/adapter"
import { makeEnvelope } from "@bus/core/adapter"
import { type PostgresHandle, startPostgres } from "@bus/test-infra"
import { Effect } from "effect"
import pg from "pg"
import { migrate } from "../../src/index.js"

/** One Postgres per test file, a fresh schema per test, and every client closed at the end. */
export interface TestDb {
  readonly server: PostgresHandle
  readonly url: string
  /** A pool for the test's own statements (application_name `bus-test`). */
  readonly pool: pg.Pool
  /** A new, migrated schema name. */
  readonly freshSchema: () => Promise<string>
  /** A connected client the harness closes at the end. */
  readonly client: (applicationName?: string) => Promise<pg.Client>
  readonly close: () => Promise<void>
}

export const startDb = async (): Promise<TestDb> => {
  const server = await startPostgres()
  const pool = new pg.Pool({ connectionString: server.url, application_name: "bus-test", max: 8 })
  pool.on("error", () => {})
  const clients: Array<pg.Client> = []
  let n = 0
  return {
    server,
    url: server.url,
    pool,
    freshSchema: async () => {
      const schema = `t${++n}_${randomBytes(3).toString("hex")}`
      await migrate({ pool, schema })
      return schema
    },
    client: async (applicationName = "bus-test-client") => {
      const c = new pg.Client({ connectionString: server.url, application_name: applicationName })
      c.on("error", () => {})
      await c.connect()
      clients.push(c)
      return c
    },
    close: async () => {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
      await pool.end().catch(() => {})
      await server.stop()
    },
  }
}

/** Builds a valid envelope synchronously. */
export const event = (tenant: string, channel: string, data: unknown = null, type = "test.event"): Envelope =>
  Effect.runSync(makeEnvelope({ tenant, channel, type, data: data as never }))

/** Runs `fn` in BEGIN … COMMIT on a pooled client. */
export const inTransaction = async <A>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<A>,
): Promise<A> => {
  const client = await pool.connect()
  const ignore = () => {}
  client.on("error", ignore)
  try {
    await client.query("BEGIN")
    const result = await fn(client)
    await client.query("COMMIT")
    return result
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {})
    throw error
  } finally {
    client.removeListener("error", ignore)
    client.release()
  }
}

/** Polls `check` until it returns a value other than undefined, or fails after `ms`. */
export const eventually = async <A>(
  check: () => A | undefined | Promise<A | undefined>,
  ms = 10_000,
): Promise<A> => {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/** Adds the integrity check a cursor body needs, so a test can reach the structural checks behind it. */
export const seal = (body: string): string =>
  `${body}:${createHash("sha256").update(body).digest("hex").slice(0, 8)}`
