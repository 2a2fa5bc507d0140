/**
 * Errors the `bus` command reports: one line an operator can act on, and an exit code.
 *
 * @module
 */

/** A failure with a message for humans; `code` is the exit code (2: usage, 1: everything else). */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code: number = 1,
  ) {
    super(message)
    this.name = "CliError"
  }
}

/** A URL with its password replaced by `***`, for messages. */
export const redact = (url: string): string => {
  try {
    const u = new URL(url)
    if (u.password !== "") u.password = "***"
    return u.toString()
  } catch {
    return url.replace(/\/\/([^:/@]+):[^@/]*@/, "//$1:***@")
  }
}

/** Checks a Postgres connection string before anything connects with it. */
export const checkPostgresUrl = (url: string | undefined): string => {
  if (url === undefined || url.trim() === "") {
    throw new CliError(
      "no database URL: pass --url postgres://user:password@host:5432/db or set DATABASE_URL",
      2,
    )
  }
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new CliError(
      `not a database URL: ${JSON.stringify(redact(url))} (expected postgres://user:password@host:5432/database)`,
      2,
    )
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new CliError(
      `not a Postgres URL: ${JSON.stringify(redact(url))} starts with ${parsed.protocol}//, expected postgres:// or postgresql://`,
      2,
    )
  }
  if (parsed.hostname === "" && !parsed.searchParams.has("host")) {
    throw new CliError(`the database URL ${JSON.stringify(redact(url))} names no host`, 2)
  }
  return url
}

/** Checks a broker URL (`redis://`, `rediss://`, `nats://`, …). */
export const checkBrokerUrl = (url: string, what: string, protocols: ReadonlyArray<string>): string => {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new CliError(`not a ${what} URL: ${JSON.stringify(redact(url))}`, 2)
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new CliError(
      `not a ${what} URL: ${JSON.stringify(redact(url))} (expected ${protocols.map((p) => `${p}//`).join(" or ")})`,
      2,
    )
  }
  return url
}

const codeOf = (e: unknown): string | undefined => {
  const code = (e as { code?: unknown } | null)?.code
  return typeof code === "string" ? code : undefined
}

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** Where a URL points, for messages: `host:port/database`. */
export const whereOf = (url: string): string => {
  try {
    const u = new URL(url)
    return `${u.hostname || u.searchParams.get("host") || "localhost"}:${u.port || "5432"}${u.pathname}`
  } catch {
    return redact(url)
  }
}

/** Turns what `pg` throws while connecting or querying into a message for an operator. */
export const postgresError = (error: unknown, url: string, schema: string): CliError => {
  if (error instanceof CliError) return error
  const code = codeOf(error)
  const where = whereOf(url)
  const message = messageOf(error)
  switch (code) {
    case "ECONNREFUSED":
      return new CliError(
        `cannot reach Postgres at ${where}: connection refused (is the server running there?)`,
      )
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new CliError(`cannot reach Postgres at ${where}: the host name does not resolve`)
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return new CliError(`cannot reach Postgres at ${where}: ${message}`)
    case "28P01":
    case "28000":
      return new CliError(`Postgres at ${where} refused the login: ${message}`)
    case "3D000":
      return new CliError(`Postgres at ${where}: ${message}`)
    case "3F000":
    case "42P01":
      return new CliError(
        `Postgres at ${where} has no @bus outbox in schema "${schema}" (${message}): run \`bus migrate\` first`,
      )
    case "42501":
      return new CliError(`Postgres at ${where}: permission denied (${message})`)
  }
  if (/timeout/i.test(message)) {
    return new CliError(`cannot reach Postgres at ${where}: no answer in time (${message})`)
  }
  if (/Connection terminated/i.test(message)) {
    return new CliError(`Postgres at ${where} closed the connection: ${message}`)
  }
  return new CliError(`Postgres at ${where}: ${message}`)
}
