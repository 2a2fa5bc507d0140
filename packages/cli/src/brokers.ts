import type { BusError } from "@bus/core"
import type { Transport } from "@bus/core/adapter"
import type { Layer } from "effect"
import { CliError, checkBrokerUrl } from "./errors.js"

/**
 * Broker transports for `bus tail` and for counting broker dead letters in `bus status`,
 * loaded only when needed (a Postgres-only deployment never loads a broker client).
 *
 * @module
 */

/** Where the brokers are: flags first, then `REDIS_URL` / `NATS_URL`. */
export interface BrokerUrls {
  readonly redis?: string | undefined
  readonly nats?: string | undefined
}

/** Broker URLs from flags and the environment, checked. */
export const brokerUrls = (
  flags: { readonly redisUrl?: string | undefined; readonly natsUrl?: string | undefined },
  env: Readonly<Record<string, string | undefined>>,
): BrokerUrls => {
  const redis = flags.redisUrl ?? (env.REDIS_URL?.trim() || undefined)
  const nats = flags.natsUrl ?? (env.NATS_URL?.trim() || undefined)
  return {
    redis: redis === undefined ? undefined : checkBrokerUrl(redis, "Redis", ["redis:", "rediss:"]),
    nats:
      nats === undefined
        ? undefined
        : nats
            .split(",")
            .map((u) => checkBrokerUrl(u.trim(), "NATS", ["nats:", "tls:", "ws:", "wss:"]))
            .join(","),
  }
}

/** The transport layer of a broker, or a clear error when its URL is missing. */
export const brokerTransport = async (
  name: "nats" | "redis-streams",
  urls: BrokerUrls,
  options: { readonly connectTimeoutMs?: number } = {},
): Promise<Layer.Layer<Transport, BusError>> => {
  if (name === "redis-streams") {
    if (urls.redis === undefined) {
      throw new CliError(
        "the redis-streams transport needs a Redis URL: pass --redis-url redis://host:6379 or set REDIS_URL",
        2,
      )
    }
    const { redisStreamsTransport } = await import("@bus/redis-streams/adapter")
    return redisStreamsTransport({
      url: urls.redis,
      connectionName: "bus-cli",
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
    })
  }
  if (urls.nats === undefined) {
    throw new CliError(
      "the nats transport needs a NATS URL: pass --nats-url nats://host:4222 or set NATS_URL",
      2,
    )
  }
  const { natsTransport } = await import("@bus/nats/adapter")
  return natsTransport({ servers: urls.nats.split(",") }) as Layer.Layer<Transport, BusError>
}
