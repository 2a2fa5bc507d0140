import { freePort, type PostgresHandle, startPostgres } from "@bus/test-infra"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { toBusError } from "../src/errors.js"

/**
 * The Postgres error mapper on what `pg` throws against a real server: each condition lands on
 * the member of the error family every transport uses for it, with `retryable` saying whether
 * the same call can succeed later.
 */

/** What `pg` throws for `sql` on a fresh client of `url` (connecting included); fails the test if nothing. */
const pgFailure = async (
  url: string,
  sql = "SELECT 1",
  applicationName = "bus-errors-test",
): Promise<unknown> => {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: 10_000,
    application_name: applicationName,
  })
  client.on("error", () => {})
  try {
    await client.connect()
    await client.query(sql)
  } catch (error) {
    return error
  } finally {
    await client.end().catch(() => {})
  }
  throw new Error(`expected ${sql} on ${applicationName} to fail`)
}

const withUrl = (url: string, change: (u: URL) => void): string => {
  const u = new URL(url)
  change(u)
  return u.toString()
}

let server: PostgresHandle

beforeAll(async () => {
  server = await startPostgres()
})

afterAll(async () => {
  await server?.stop()
})

describe("toBusError (postgres-notify)", () => {
  it("connection refused: TransportUnavailable, retryable", async () => {
    const port = await freePort()
    const mapped = toBusError(await pgFailure(withUrl(server.url, (u) => (u.port = String(port)))), "connect")
    expect(mapped).toMatchObject({
      _tag: "TransportUnavailable",
      transport: "postgres-notify",
      retryable: true,
    })
    expect(mapped.message).toMatch(/^connect: /)
  })

  it("a connection the server terminates mid-query: TransportUnavailable, retryable", async () => {
    const victim = pgFailure(server.url, "SELECT pg_sleep(30)", "bus-errors-victim")
    let terminated = 0
    for (let i = 0; i < 200 && terminated === 0; i++) {
      terminated = await server.terminateConnections({
        applicationName: "bus-errors-victim",
        query: "pg_sleep",
      })
      if (terminated === 0) await new Promise((r) => setTimeout(r, 25))
    }
    expect(terminated).toBe(1)
    expect(toBusError(await victim, "read")).toMatchObject({ _tag: "TransportUnavailable", retryable: true })
  })

  it("a wrong password and a database that does not exist: ConfigError, not retryable", async () => {
    const wrongPassword = toBusError(
      await pgFailure(withUrl(server.url, (u) => (u.password = "wrong"))),
      "connect",
    )
    expect(wrongPassword).toMatchObject({ _tag: "ConfigError", retryable: false })
    expect(wrongPassword.message).toMatch(/password/)
    const noDatabase = toBusError(
      await pgFailure(withUrl(server.url, (u) => (u.pathname = "/no_such_db"))),
      "connect",
    )
    expect(noDatabase).toMatchObject({ _tag: "ConfigError", retryable: false })
  })

  it("an outbox schema that was never migrated: ConfigError naming migrate", async () => {
    const mapped = toBusError(await pgFailure(server.url, "SELECT * FROM never_migrated.outbox"), "read")
    expect(mapped).toMatchObject({ _tag: "ConfigError", retryable: false })
    expect(mapped.message).toMatch(/migrate/)
  })

  it("a statement cancelled by statement_timeout: TransportFailure, retryable", async () => {
    const mapped = toBusError(
      await pgFailure(server.url, "SET statement_timeout = 20; SELECT pg_sleep(2)"),
      "read",
    )
    expect(mapped).toMatchObject({ _tag: "TransportFailure", transport: "postgres-notify", retryable: true })
  })

  it("a statement the same data refuses again (unique violation): TransportFailure, not retryable", async () => {
    const mapped = toBusError(
      await pgFailure(
        server.url,
        "CREATE TEMP TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); INSERT INTO t VALUES (1)",
      ),
      "append",
    )
    expect(mapped).toMatchObject({ _tag: "TransportFailure", retryable: false })
    expect(mapped.message).toMatch(/duplicate key/)
  })
})
