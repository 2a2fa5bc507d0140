import { statSync } from "node:fs"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type PostgresHandle, startPostgres } from "../../src/index.js"

/** A client that does not crash the test process when its server goes away under it. */
async function connect(url: string, options: pg.ClientConfig = {}): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, ...options })
  client.on("error", () => undefined)
  await client.connect()
  return client
}

async function scalar<T>(url: string, sql: string): Promise<T> {
  const client = await connect(url)
  try {
    const result = await client.query(sql)
    return Object.values((result.rows[0] ?? {}) as object)[0] as T
  } finally {
    await client.end()
  }
}

describe("startPostgres (embedded binaries)", () => {
  let server: PostgresHandle

  beforeAll(async () => {
    server = await startPostgres()
  })
  afterAll(async () => {
    await server?.stop()
  })

  it("serves a loopback URL with the requested database and room for fan-out", async () => {
    expect(server.controllable).toBe(true)
    expect(server.url).toMatch(/^postgres:\/\/bus:[0-9a-f]+@127\.0\.0\.1:\d+\/bus_test$/)
    expect(await scalar<string>(server.url, "SELECT current_database()")).toBe("bus_test")
    expect(Number(await scalar<string>(server.url, "SHOW max_connections"))).toBeGreaterThanOrEqual(200)
    expect(await scalar<string>(server.url, "SHOW listen_addresses")).toBe("127.0.0.1")
  })

  it("runs as an unprivileged account when the tests run as root", async () => {
    const dataDir = await scalar<string>(server.url, "SHOW data_directory")
    if (process.getuid?.() === 0) expect(statSync(dataDir).uid).not.toBe(0)
    else expect(statSync(dataDir).uid).toBe(process.getuid?.())
  })

  it("round-trips LISTEN/NOTIFY", async () => {
    const listener = await connect(server.url)
    try {
      await listener.query("LISTEN bus_events")
      const received = new Promise<pg.Notification>((resolve) => listener.once("notification", resolve))
      await scalar(server.url, "SELECT pg_notify('bus_events', 'hello')")
      const notification = await received
      expect(notification.channel).toBe("bus_events")
      expect(notification.payload).toBe("hello")
    } finally {
      await listener.end()
    }
  })

  it("keeps committed rows across restart(), and across kill() + restart()", async () => {
    await scalar(server.url, "CREATE TABLE kept (id int PRIMARY KEY)")
    await scalar(server.url, "INSERT INTO kept VALUES (1)")
    const url = server.url
    await server.restart()
    expect(server.url).toBe(url)
    await scalar(server.url, "INSERT INTO kept VALUES (2)")
    await server.kill()
    await expect(connect(server.url, { connectionTimeoutMillis: 1_000 })).rejects.toThrow()
    await server.restart()
    expect(await scalar<string>(server.url, "SELECT string_agg(id::text, ',' ORDER BY id) FROM kept")).toBe(
      "1,2",
    )
  })

  it("freezes on pause() and answers again after resume()", async () => {
    const client = await connect(server.url, { query_timeout: 500 })
    try {
      await server.pause()
      await expect(client.query("SELECT 1")).rejects.toThrow(/timeout/i)
      await server.resume()
      expect(await scalar<number>(server.url, "SELECT 1")).toBe(1)
    } finally {
      await server.resume()
      await client.end().catch(() => undefined)
    }
  })

  it("terminateConnections drops a listening client and spares the others", async () => {
    const listener = await connect(server.url, { application_name: "bus-listener" })
    const bystander = await connect(server.url, { application_name: "bus-bystander" })
    try {
      await listener.query("LISTEN bus_events")
      const dropped = new Promise<Error>((resolve) => listener.once("error", resolve))
      expect(await server.terminateConnections({ applicationName: "bus-listener", query: "LISTEN" })).toBe(1)
      expect((await dropped).message).toMatch(/terminating connection due to administrator command/)
      expect((await bystander.query("SELECT 1 AS one")).rows[0].one).toBe(1)
      expect(await server.terminateConnections({ applicationName: "bus-listener" })).toBe(0)
    } finally {
      await listener.end().catch(() => undefined)
      await bystander.end()
    }
  })

  it("refuses fault injection once stopped, and stop() is idempotent", async () => {
    const other = await startPostgres({ database: "postgres" })
    expect(other.url).toMatch(/\/postgres$/)
    await other.stop()
    await other.stop()
    await expect(other.restart()).rejects.toThrow(/stopped/)
  })
})

describe("startPostgres (local binaries)", () => {
  let server: PostgresHandle | undefined

  afterAll(async () => {
    await server?.stop()
  })

  it("uses the installed Postgres", async () => {
    server = await startPostgres({ binaries: "local", database: "local_db" })
    const version = await scalar<string>(server.url, "SELECT version()")
    expect(version).toMatch(/^PostgreSQL \d+/)
    expect(await scalar<string>(server.url, "SELECT current_database()")).toBe("local_db")
  })
})
