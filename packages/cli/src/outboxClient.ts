import pg from "pg"
import { CliError, postgresError, redact } from "./errors.js"

/**
 * The one way the `bus` command connects: a short-lived client named `bus-cli`, connection
 * failures turned into messages an operator can act on, and the outbox schema checked
 * before anything reads it.
 *
 * @module
 */

/** Connects to `url` and checks that `schema` exists; the caller ends the client. */
export const openOutboxClient = async (url: string, schema: string): Promise<pg.Client> => {
  const client = new pg.Client({
    connectionString: url,
    application_name: "bus-cli",
    connectionTimeoutMillis: 5_000,
    // A command never hangs on a silent connection (a NAT or proxy that dropped the flow).
    query_timeout: 30_000,
    keepAlive: true,
  })
  // A connection lost mid-command surfaces as the failed query; this keeps it from crashing the process.
  client.on("error", () => {})
  try {
    await client.connect()
    const found = await client.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema])
    if (found.rowCount === 0) {
      throw new CliError(
        `Postgres at ${redact(url)} has no schema "${schema}": run \`bus migrate --schema ${schema}\` first (or pass the schema your application uses with --schema)`,
      )
    }
    return client
  } catch (error) {
    await client.end().catch(() => {})
    throw error instanceof CliError ? error : postgresError(error, url, schema)
  }
}
