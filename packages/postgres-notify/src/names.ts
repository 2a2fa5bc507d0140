import { createHash, randomBytes } from "node:crypto"
import { type Address, validateName } from "@bus/core/adapter"

/**
 * NOTIFY channel names and payloads.
 *
 * A channel name is an identifier of at most 63 bytes, so tenant and channel names never
 * appear in it: it is `bus_` plus a hash of (schema, tenant, channel). That bounds the
 * length, needs no quoting, and keeps two schemas on one database from waking each
 * other. The payload names the address in clear (names are safe by the core naming
 * rule) so a listener that watches two addresses hashing alike still knows which one
 * changed. Payloads are untrusted: anyone with access to the database can NOTIFY any
 * channel.
 *
 * @module
 */

const hex = (input: string, chars: number): string =>
  createHash("sha256").update(input).digest("hex").slice(0, chars)

/** NOTIFY channel of one address in one schema (36 bytes; 128 bits of hash). */
export const addressChannel = (schema: string, address: Address): string =>
  `bus_${hex(`address\u0000${schema}\u0000${address.tenant}\u0000${address.channel}`, 32)}`

/** NOTIFY channel on which producers wake relays of one schema. */
export const relayChannel = (schema: string): string => `bus_relay_${hex(`relay\u0000${schema}`, 24)}`

/** A fresh channel for one self-probe, so probes of different processes never meet. */
export const probeChannel = (): string => `bus_probe_${randomBytes(12).toString("hex")}`

/** Payload of an address wake-up. Constant per address, so Postgres folds repeats within one transaction. */
export const encodePayload = (address: Address): string => `1:${address.tenant}:${address.channel}`

/** Payload of a relay wake-up. */
export const relayPayload = "1"

/**
 * Parses an address wake-up payload; `undefined` for anything that is not one (another
 * writer's message, a future format). Never throws.
 */
export const decodePayload = (payload: unknown): Address | undefined => {
  if (typeof payload !== "string" || payload.length > 200) return undefined
  const parts = payload.split(":")
  if (parts.length !== 3 || parts[0] !== "1") return undefined
  const tenant = validateName("tenant", parts[1])
  const channel = validateName("channel", parts[2])
  if (typeof tenant !== "string" || typeof channel !== "string") return undefined
  return { tenant, channel }
}
