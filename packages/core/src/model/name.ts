import { Effect } from "effect"
import { InvalidName } from "./errors.js"

/**
 * The one naming rule for tenants, channels and consumer groups, chosen so that a
 * name is a single safe token on every transport:
 *
 * - 1 to 64 characters, each `A-Z`, `a-z`, `0-9`, `_` or `-`, the first a letter or digit.
 * - No `.`, `*`, `>` or whitespace, so a name is exactly one NATS subject token and
 *   can never act as a wildcard or add a subject level.
 * - No `:`, `{` or `}`, so the Redis key `bus:{tenant}:channel` splits one way only and
 *   the hash tag is the tenant alone.
 * - No quotes, so a name never needs escaping inside SQL identifiers or NOTIFY channels;
 *   Postgres channel identifiers are additionally hashed by the transport to fit 63 bytes.
 * - Case-sensitive: `Acme` and `acme` are different tenants on every transport.
 *
 * @module
 */

/**
 * The tenant of a consumer group across tenants: `consume({ tenant: "*", channel, group })`
 * runs one channel for every tenant. Accepted by `consume` only; everywhere else (subscribe,
 * publish, SSE, group and channel names) it is refused with {@link InvalidName} rule
 * `wildcard`, so it can never widen what a subscriber or a browser sees.
 */
export const allTenants = "*"

/** Longest accepted name, in characters (all ASCII, so also bytes). */
export const maxNameLength = 64

const allowed = /^[A-Za-z0-9_-]+$/
const allowedStart = /^[A-Za-z0-9]/

/** `String(value)` for an error message, without throwing on objects that have no usable `toString`. */
const show = (value: unknown): string => {
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

/** What a name is used as; it appears in errors so the caller knows which argument was wrong. */
export type NameField = "tenant" | "channel" | "group"

/**
 * Checks `value` against the naming rule; returns the name or the typed reason it was refused.
 */
export const validateName = (field: NameField, value: unknown): InvalidName | string => {
  if (typeof value !== "string") {
    return new InvalidName({
      field,
      value: show(value),
      rule: "not-a-string",
      message: `${field} must be a string, got ${typeof value}`,
    })
  }
  if (value === allTenants) {
    return new InvalidName({
      field,
      value,
      rule: "wildcard",
      message: `${field} "*" (every tenant) is accepted only by consume, for a consumer group across tenants; a subscription, a publish or an SSE stream names one ${field}`,
    })
  }
  if (value.length === 0) {
    return new InvalidName({ field, value, rule: "empty", message: `${field} must not be empty` })
  }
  if (value.length > maxNameLength) {
    return new InvalidName({
      field,
      value,
      rule: "too-long",
      message: `${field} is ${value.length} characters; the limit is ${maxNameLength}`,
    })
  }
  if (!allowed.test(value)) {
    const bad = [...value].find((c) => !allowed.test(c)) ?? ""
    return new InvalidName({
      field,
      value,
      rule: "invalid-character",
      message: `${field} ${JSON.stringify(value)} contains ${JSON.stringify(bad)}; only A-Z, a-z, 0-9, "_" and "-" are allowed`,
    })
  }
  if (!allowedStart.test(value)) {
    return new InvalidName({
      field,
      value,
      rule: "invalid-start",
      message: `${field} ${JSON.stringify(value)} must start with a letter or digit`,
    })
  }
  return value
}

/** Effect form of {@link validateName}: fails with {@link InvalidName}. */
export const checkName = (field: NameField, value: unknown): Effect.Effect<string, InvalidName> => {
  const result = validateName(field, value)
  return typeof result === "string" ? Effect.succeed(result) : Effect.fail(result)
}

/** Checks a (tenant, channel) pair, failing on the first bad name. */
export const checkAddress = (address: {
  readonly tenant: unknown
  readonly channel: unknown
}): Effect.Effect<{ readonly tenant: string; readonly channel: string }, InvalidName> =>
  Effect.all({ tenant: checkName("tenant", address.tenant), channel: checkName("channel", address.channel) })
