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
const openOutboxClient = async (url: string, schema: string): Promise<pg.Client> => {
  const client = new pg.Client({
    connectionString: url,
    application_name: "bus-cli",
    connectionTimeoutMillis: 10_000,
    // A command never hangs on a silent connection (a NAT or proxy that dropped the flow)…
    query_timeout: 30_000,
    // …nor holds a lock for long on the server side (an ALTER waiting on a busy table gives up
    // there too, instead of queueing every writer of the table behind it).
    statement_timeout: 30_000,
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

/**
 * Runs `fn` with a client from {@link openOutboxClient}, ended afterwards whatever happens.
 * Errors of `fn` pass through as they are: each command knows which of its refusals to explain.
 */
export const withOutboxClient = async <A>(
  url: string,
  schema: string,
  fn: (client: pg.Client) => Promise<A>,
): Promise<A> => {
  const client = await openOutboxClient(url, schema)
  try {
    return await fn(client)
  } finally {
    await client.end().catch(() => {})
  }
}
