import { ConfigError, TransportFailure, TransportUnavailable } from "@bus/core"

/**
 * Turns whatever `pg` throws into the @bus error family, so callers decide between
 * retrying and giving up from `retryable` alone.
 *
 * @module
 */

/** Transport name used in every error this package reports. */
export const transportName = "postgres-notify"

// SQLSTATE classes and codes that mean "the server or the connection went away":
// 08 connection exceptions, 57P01-57P05 shutdowns/crash/idle timeouts, 53300 too many connections.
const unavailableCodes = new Set(["57P01", "57P02", "57P03", "57P05", "53300", "53400"])
// Transient conflicts worth retrying as they are.
const retryableCodes = new Set(["40001", "40P01", "55P03", "57014", "53200"])
// Node socket errors and pg's own connection messages carry no SQLSTATE.
const networkCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EHOSTUNREACH",
])

const codeOf = (cause: unknown): string | undefined => {
  const code = (cause as { code?: unknown } | null)?.code
  return typeof code === "string" ? code : undefined
}

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** True when `cause` means the connection or server is gone (as opposed to a failed statement). */
export const isConnectionError = (cause: unknown): boolean => {
  const code = codeOf(cause)
  if (code !== undefined) {
    return code.startsWith("08") || unavailableCodes.has(code) || networkCodes.has(code)
  }
  const message = messageOf(cause)
  return /Connection terminated|connection timeout|Client has encountered a connection error|not queryable|timeout exceeded when trying to connect/i.test(
    message,
  )
}

/**
 * Maps a `pg` (or postgres.js) failure of `what` (e.g. "read") to the bus error family, with the
 * same argument order as every transport's mapper (`toBusError(cause, what)`):
 * {@link TransportUnavailable} when the server is unreachable or the connection went away (retry
 * helps), {@link ConfigError} when the configuration is wrong (credentials, a database or schema
 * that does not exist), else {@link TransportFailure}, retryable only for transient conflicts.
 */
export const toBusError = (
  cause: unknown,
  what: string,
): TransportUnavailable | TransportFailure | ConfigError => {
  const message = `${what}: ${messageOf(cause)}`
  if (isConnectionError(cause)) {
    return new TransportUnavailable({ transport: transportName, message, cause })
  }
  const code = codeOf(cause)
  // Class 28 invalid authorization (wrong password, no pg_hba entry), 3D000 no such database:
  // the same settings fail the same way until someone changes them.
  if (code?.startsWith("28") || code === "3D000") {
    return new ConfigError({
      message: `${message} (check the connection string's user, password and database)`,
    })
  }
  // 42P01 undefined_table, 3F000 invalid_schema_name: the outbox schema is missing.
  if (code === "42P01" || code === "3F000") {
    return new ConfigError({
      message: `${message} (is the outbox schema migrated? run migrate() or \`bus-postgres migrate\`)`,
    })
  }
  return new TransportFailure({
    transport: transportName,
    message,
    retryable: code !== undefined && retryableCodes.has(code),
    cause,
  })
}
