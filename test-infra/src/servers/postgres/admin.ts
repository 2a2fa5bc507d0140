import pg from "pg"
import type { TerminateConnectionsFilter } from "../types.js"

/** Names the harness's own sessions in pg_stat_activity, so tests can tell them apart. */
const APPLICATION_NAME = "bus-test-infra"

async function withClient<T>(
  connectionString: string,
  timeoutMs: number,
  work: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client({
    connectionString,
    application_name: APPLICATION_NAME,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
  })
  // A server killed mid-query emits 'error' on the client; unhandled, it would crash the process.
  client.on("error", () => undefined)
  try {
    await client.connect()
    return await work(client)
  } finally {
    // end() waits for the server to close its side, which a paused server never does.
    await Promise.race([
      client.end().catch(() => undefined),
      new Promise((resolve) => setTimeout(resolve, 2_000).unref()),
    ])
  }
}

/** True when the server accepts a password login and answers `SELECT 1` within a second. */
export async function postgresAnswers(connectionString: string): Promise<boolean> {
  return withClient(connectionString, 1_000, async (client) => {
    const result = await client.query<{ one: number }>("SELECT 1 AS one")
    return result.rows[0]?.one === 1
  })
}

/** Creates `database` unless it exists, through the maintenance database of the same server. */
export async function createDatabase(maintenanceUrl: string, database: string): Promise<void> {
  await withClient(maintenanceUrl, 10_000, async (client) => {
    const exists = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database])
    if (exists.rowCount === 0) await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`)
  })
}

/**
 * Terminates matching client backends of the URL's database and waits (up to 5 s each, Postgres 14+)
 * until they are gone, so the caller can assert on the disconnect right away.
 */
export async function terminateConnections(
  connectionString: string,
  filter: TerminateConnectionsFilter = {},
): Promise<number> {
  return withClient(connectionString, 15_000, async (client) => {
    const result = await client.query<{ terminated: number }>(
      `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))::int AS terminated
         FROM pg_stat_activity
        WHERE pid <> pg_backend_pid()
          AND backend_type = 'client backend'
          AND datname = current_database()
          AND ($1::text IS NULL OR application_name = $1::text)
          AND ($2::int IS NULL OR pid = $2::int)
          AND ($3::text IS NULL OR strpos(query, $3::text) > 0)`,
      [filter.applicationName ?? null, filter.pid ?? null, filter.query ?? null],
    )
    return result.rows[0]?.terminated ?? 0
  })
}
