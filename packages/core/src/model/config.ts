import { ConfigError } from "./errors.js"

/**
 * Configuration and transport selection. One value, `transport`, picks the transport;
 * with `"auto"` the expected notify rate decides, so moving from Postgres NOTIFY to a
 * broker is a configuration change (an environment variable), never a code change.
 *
 * @module
 */

/** Transports a bus can run on. */
export type TransportName = "postgres-notify" | "nats" | "redis-streams" | "memory" | "memory-broker"

/**
 * Brokers `"auto"` can pick when the notify rate is over the threshold (`memory-broker`:
 * core's in-memory stand-in for unit tests of relay setups).
 */
export type BrokerName = "nats" | "redis-streams" | "memory-broker"

/** Selection-relevant configuration. */
export interface SelectionConfig {
  /** A transport, or `"auto"` to decide by `notifyRate`. Default `"auto"`. */
  readonly transport?: TransportName | "auto"
  /** Expected notifying commits per second (producer transactions that publish). */
  readonly notifyRate?: number
  /** Rate at and above which `"auto"` leaves Postgres NOTIFY for `broker`. Default {@link defaultNotifyRateThreshold}. */
  readonly notifyRateThreshold?: number
  /** The broker `"auto"` picks above the threshold. */
  readonly broker?: BrokerName
}

/**
 * Default threshold for `"auto"`: notifying commits per second. NOTIFY serialises
 * committing transactions on one global lock; the benchmark suite measures where that
 * starts to hurt on a given machine (docs/benchmarks.md). This default is deliberately
 * below the commonly reported trouble zone so the flip happens with headroom.
 */
export const defaultNotifyRateThreshold = 1_000

/** The outcome of selection, logged once at start. */
export interface TransportChoice {
  readonly transport: TransportName
  readonly reason: string
}

const transportNames: ReadonlyArray<TransportName> = [
  "postgres-notify",
  "nats",
  "redis-streams",
  "memory",
  "memory-broker",
]
const brokerNames: ReadonlyArray<BrokerName> = ["nats", "redis-streams", "memory-broker"]

/**
 * Picks the transport for a configuration, or says what is missing. `own` is the
 * transport that reads the outbox directly (what `"auto"` keeps below the threshold):
 * `postgres-notify` for the Postgres outbox, `memory` for the in-memory one.
 */
export const selectTransport = (
  config: SelectionConfig,
  own: TransportName = "postgres-notify",
): TransportChoice | ConfigError => {
  const transport = config.transport ?? "auto"
  if (transport !== "auto") {
    if (!transportNames.includes(transport)) {
      return new ConfigError({
        message: `unknown transport ${JSON.stringify(transport)}; expected one of auto, ${transportNames.join(", ")}`,
      })
    }
    return { transport, reason: `transport is set to ${transport}` }
  }
  // Checked even below the threshold, so a typo surfaces at deploy time rather than at the flip.
  if (config.broker !== undefined && !brokerNames.includes(config.broker)) {
    return new ConfigError({
      message: `unknown broker ${JSON.stringify(config.broker)}; expected ${brokerNames.join(" or ")}`,
    })
  }
  const threshold = config.notifyRateThreshold ?? defaultNotifyRateThreshold
  if (!(threshold > 0)) return new ConfigError({ message: "notifyRateThreshold must be a positive number" })
  const rate = config.notifyRate ?? 0
  if (!(rate >= 0)) return new ConfigError({ message: "notifyRate must be a number ≥ 0" })
  if (rate < threshold) {
    return {
      transport: own,
      reason: `auto: notifyRate ${rate}/s is below notifyRateThreshold ${threshold}/s`,
    }
  }
  if (config.broker === undefined) {
    return new ConfigError({
      message: `auto: notifyRate ${rate}/s reaches notifyRateThreshold ${threshold}/s but no broker is configured (set broker or BUS_BROKER to nats or redis-streams)`,
    })
  }
  return {
    transport: config.broker,
    reason: `auto: notifyRate ${rate}/s reaches notifyRateThreshold ${threshold}/s, so the ${config.broker} broker`,
  }
}

const parseRate = (name: string, raw: string | undefined): number | undefined | ConfigError => {
  if (raw === undefined || raw.trim() === "") return undefined
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0)
    return new ConfigError({ message: `${name}=${JSON.stringify(raw)} is not a number ≥ 0` })
  return n
}

/**
 * Reads selection settings from environment variables, over `base`:
 * `BUS_TRANSPORT`, `BUS_NOTIFY_RATE`, `BUS_NOTIFY_RATE_THRESHOLD`, `BUS_BROKER`.
 * Set variables win over `base`, so operators flip without touching code.
 */
export const selectionFromEnv = (
  base: SelectionConfig = {},
  env: Readonly<Record<string, string | undefined>> = process.env,
): SelectionConfig | ConfigError => {
  const rate = parseRate("BUS_NOTIFY_RATE", env.BUS_NOTIFY_RATE)
  if (rate instanceof ConfigError) return rate
  const threshold = parseRate("BUS_NOTIFY_RATE_THRESHOLD", env.BUS_NOTIFY_RATE_THRESHOLD)
  if (threshold instanceof ConfigError) return threshold
  const transport = env.BUS_TRANSPORT?.trim() || undefined
  const broker = env.BUS_BROKER?.trim() || undefined
  return {
    ...base,
    ...(transport !== undefined ? { transport: transport as TransportName | "auto" } : {}),
    ...(rate !== undefined ? { notifyRate: rate } : {}),
    ...(threshold !== undefined ? { notifyRateThreshold: threshold } : {}),
    ...(broker !== undefined ? { broker: broker as BrokerName } : {}),
  }
}
