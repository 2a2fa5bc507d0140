/**
 * What a transport can and cannot do, declared as data so that the core, the
 * conformance suite and operators read it instead of guessing from the transport's name.
 *
 * @module
 */

/** A transport's declared abilities. */
export interface TransportCapabilities {
  /** Transport name as used in config (`postgres-notify`, `nats`, `redis-streams`, `memory`). */
  readonly name: string
  /** Subscriptions resume from a cursor after a restart. */
  readonly replay: boolean
  /** `consume` with a named group shares work among several consumers with acks. */
  readonly consumerGroups: boolean
  /** Events reach this transport from the outbox through the relay (brokers), rather than directly. */
  readonly needsRelay: boolean
  /** Largest encoded envelope the transport carries, in bytes. */
  readonly maxPayloadBytes: number
  /** Order guarantee: events of one producer transaction stay in order on their channel. */
  readonly ordering: "per-transaction" | "per-channel"
  /** The transport drops duplicate sends of the same event id by itself (broker-side dedupe). */
  readonly dedupesSends: boolean
}

/** Defaults a transport overrides only where it differs. */
export const defaultCapabilities: Omit<TransportCapabilities, "name"> = {
  replay: true,
  consumerGroups: true,
  needsRelay: false,
  maxPayloadBytes: 1024 * 1024,
  ordering: "per-transaction",
  dedupesSends: false,
}

/** Builds a capability record from defaults plus overrides. */
export const capabilities = (
  name: string,
  overrides: Partial<Omit<TransportCapabilities, "name">> = {},
): TransportCapabilities => ({ name, ...defaultCapabilities, ...overrides })
