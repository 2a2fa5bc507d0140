import { type BusError, ConfigError, isBusError, TransportFailure, TransportUnavailable } from "@bus/core"

/**
 * The Redis Streams transport's name in errors and metrics, and how what ioredis throws maps
 * to the bus's one error model (the same role as `errors.ts` in every transport).
 *
 * @module
 */

export const transportName = "redis-streams"

/**
 * Reply errors after which the same command can succeed later: the server is loading,
 * busy with a script, out of memory, a replica, or a cluster is failing over or moved a slot.
 */
const retryableReplies = new Set([
  // A cluster's slot moved (a failover, a resharding): sent again once the slot map is refreshed.
  "MOVED",
  "ASK",
  // A node without the script (a promoted replica, a restart): sent again, with EVAL.
  "NOSCRIPT",
  "LOADING",
  "BUSY",
  "TRYAGAIN",
  "CLUSTERDOWN",
  "MASTERDOWN",
  "OOM",
  "READONLY",
  "NOREPLICAS",
  "UNBLOCKED",
])

/** Reply errors that only a configuration change fixes: no or wrong credentials, an ACL that forbids the command. */
const configReplies = new Set(["NOAUTH", "WRONGPASS", "NOPERM"])

const isReplyError = (error: unknown): error is Error =>
  error instanceof Error && (error.name === "ReplyError" || error.constructor?.name === "ReplyError")

/**
 * Maps what ioredis throws to the bus error family: credential and ACL replies to
 * `ConfigError`, other reply errors to `TransportFailure` (retryable for the transient
 * ones), the rest (refused, reset, timed out) to `TransportUnavailable`.
 */
export const toBusError = (error: unknown, what: string): BusError => {
  if (isBusError(error)) return error
  const message = error instanceof Error ? error.message : String(error)
  if (isReplyError(error)) {
    const code = message.split(" ", 1)[0] ?? ""
    if (configReplies.has(code)) {
      return new ConfigError({
        message: `${what}: ${message} (check the password or ACL user the bus connects with)`,
      })
    }
    return new TransportFailure({
      transport: transportName,
      retryable: retryableReplies.has(code),
      message: `${what}: ${message}`,
      cause: error,
    })
  }
  return new TransportUnavailable({ transport: transportName, message: `${what}: ${message}`, cause: error })
}

/** True when the error says the consumer group (or its stream) does not exist. */
export const isNoGroup = (error: BusError): boolean => error.message.includes("NOGROUP")
