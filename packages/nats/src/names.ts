import { createHash } from "node:crypto"
import { ConfigError } from "@bus/core"
import type { Address } from "@bus/core/adapter"

/**
 * Subjects, stream and consumer names. Tenants and channels are checked by the core
 * naming rule before they get here (`A-Z a-z 0-9 _ -`, no `.`, `*`, `>` or spaces), so
 * each one is exactly one subject token: `<prefix>.<tenant>.<channel>` can never match
 * another address, act as a wildcard or add a subject level.
 *
 * @module
 */

/** One token of the subject prefix: the same characters as a name. */
const prefixToken = /^[A-Za-z0-9_-]+$/

/** Longest accepted prefix, in characters. */
const maxPrefixLength = 128

/** Checks the subject prefix: one or more dot-separated tokens of `A-Z a-z 0-9 _ -`. */
export const validatePrefix = (prefix: unknown): ConfigError | string => {
  if (typeof prefix !== "string" || prefix.length === 0 || prefix.length > maxPrefixLength) {
    return new ConfigError({
      message: `nats: subjectPrefix must be a non-empty string of at most ${maxPrefixLength} characters`,
    })
  }
  const bad = prefix.split(".").find((token) => !prefixToken.test(token))
  if (bad !== undefined) {
    return new ConfigError({
      message: `nats: subjectPrefix ${JSON.stringify(prefix)} has the token ${JSON.stringify(bad)}; tokens are dot-separated and use only A-Z, a-z, 0-9, "_" and "-" (no wildcards, no empty tokens)`,
    })
  }
  return prefix
}

/** Subject of one tenant channel: `<prefix>.<tenant>.<channel>`. */
export const subjectOf = (prefix: string, address: Address): string =>
  `${prefix}.${address.tenant}.${address.channel}`

/** Subjects the event stream captures: every tenant channel under the prefix. */
export const streamSubject = (prefix: string): string => `${prefix}.*.*`

/** Dead-letter subject of one tenant channel: `<prefix>.dlq.<tenant>.<channel>` (one token more, so never an event subject). */
export const deadLetterSubjectOf = (prefix: string, address: Address): string =>
  `${prefix}.dlq.${address.tenant}.${address.channel}`

/** Subjects the dead-letter stream captures. */
export const deadLetterStreamSubject = (prefix: string): string => `${prefix}.dlq.*.*`

/** Default stream name for a prefix: `bus` → `BUS`, `acme.bus` → `ACME_BUS`. */
export const defaultStreamName = (prefix: string): string => prefix.replaceAll(".", "_").toUpperCase()

/** Name of the dead-letter stream that belongs to an event stream. */
export const deadLetterStreamName = (stream: string): string => `${stream}_DLQ`

/** Stream names: what nats-server accepts as a name and a file-store directory. */
const streamNamePattern = /^[A-Za-z0-9_-]{1,200}$/

/** Checks a stream name. */
export const validateStreamName = (name: unknown): ConfigError | string =>
  typeof name === "string" && streamNamePattern.test(name)
    ? name
    : new ConfigError({
        message: `nats: stream name ${JSON.stringify(name)} must be 1-200 characters of A-Z, a-z, 0-9, "_" and "-"`,
      })

/**
 * Durable consumer name of a consumer group: `bus_` and a hash of (stream, subject,
 * group). Names allow no `.`, and a hash keeps them short whatever the names are, so
 * (`a`, `b_c`) and (`a_b`, `c`) can never share a durable.
 */
export const durableName = (stream: string, subject: string, group: string): string =>
  `bus_${createHash("sha256").update(`${stream}\u0000${subject}\u0000${group}`, "utf8").digest("hex").slice(0, 32)}`
