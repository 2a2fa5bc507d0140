import { ConfigError } from "@bus/core"
import type { Redis } from "ioredis"
import { defaultKeyPrefix } from "./keys.js"

/** Options of `redisStreamsTransport`. */
export interface RedisStreamsOptions {
  /**
   * Server to connect to, e.g. `redis://127.0.0.1:6379` or `rediss://user:pw@host:6380/0`.
   * Ignored when `client` is given. Default `redis://127.0.0.1:6379`.
   */
  readonly url?: string
  /**
   * Your own ioredis client (v5 or v6). The transport sends its non-blocking commands on
   * it and never closes it; blocking reads always run on connections it duplicates from
   * it (and closes).
   */
  readonly client?: Redis
  /** First segment of every key (default `"bus"`): `<keyPrefix>:{<tenant>}:<channel>`. Must not contain `{` or `}`. */
  readonly keyPrefix?: string
  /**
   * Approximate upper bound on entries per stream: `XADD … MAXLEN ~ <maxLen>`. Default: no
   * trimming (streams grow until you trim them). See docs/redis.md, "Trimming vs retention".
   */
  readonly maxLen?: number
  /** Longest a blocking read waits before it is issued again, in ms (default 2 000). */
  readonly blockMs?: number
  /**
   * Consumer groups: entries pending this long (ms) without a heartbeat from their consumer
   * are claimed by another member with XAUTOCLAIM (default 30 000). Live members renew
   * their entries every third of this, so only entries of dead members are claimed.
   */
  readonly claimIdleMs?: number
  /**
   * How long the relay's dedupe marker of a sent event lives, in ms (default 600 000 =
   * 10 min). A relay that sends the same event again within this window adds nothing; it
   * must exceed the relay's retry horizon (see docs/redis.md, "Dedupe TTL").
   */
  readonly dedupeTtlMs?: number
  /**
   * Consumer groups: consumers with no pending entry and idle this long (ms) are deleted
   * from the group (default 3 600 000). Consumers with pending entries are never deleted.
   */
  readonly consumerIdleMs?: number
  /** Entries per read (XRANGE / XREAD COUNT) (default 500). */
  readonly pageSize?: number
  /** How long the transport waits for the server at start before failing with `TransportUnavailable` (default 10 000 ms). */
  readonly connectTimeoutMs?: number
  /**
   * `CLIENT SETNAME` of the connections the transport opens (default `"bus-redis-streams"`):
   * the shared one gets it as is, live-read connections `<name>-feed`, consumer-group
   * connections `<name>-group`. Letters, digits, `_`, `-`, `.` and `:` only.
   */
  readonly connectionName?: string
}

/** Options with defaults applied. */
export interface ResolvedOptions {
  readonly url: string
  readonly client: Redis | undefined
  readonly keyPrefix: string
  readonly maxLen: number | undefined
  readonly blockMs: number
  readonly claimIdleMs: number
  readonly dedupeTtlMs: number
  readonly consumerIdleMs: number
  readonly pageSize: number
  readonly connectTimeoutMs: number
  readonly connectionName: string
}

const positiveInt = (
  name: string,
  value: number | undefined,
  fallback: number,
  min = 1,
): number | ConfigError => {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || value < min) {
    return new ConfigError({ message: `redis-streams: ${name} must be an integer ≥ ${min}, got ${value}` })
  }
  return value
}

/** Applies defaults and checks every option; fails with `ConfigError` on the first bad one. */
export const resolveOptions = (options: RedisStreamsOptions): ResolvedOptions | ConfigError => {
  const keyPrefix = options.keyPrefix ?? defaultKeyPrefix
  if (typeof keyPrefix !== "string" || keyPrefix.length === 0 || /[{}\s]/.test(keyPrefix)) {
    return new ConfigError({
      message: `redis-streams: keyPrefix must be a non-empty string without "{", "}" or whitespace (the tenant is the key's hash tag), got ${JSON.stringify(keyPrefix)}`,
    })
  }
  const connectionName = options.connectionName ?? "bus-redis-streams"
  if (typeof connectionName !== "string" || !/^[A-Za-z0-9_.:-]{1,100}$/.test(connectionName)) {
    return new ConfigError({
      message: `redis-streams: connectionName must be 1-100 letters, digits, "_", "-", "." or ":", got ${JSON.stringify(connectionName)}`,
    })
  }
  if (options.url !== undefined && options.client !== undefined) {
    return new ConfigError({ message: "redis-streams: pass either url or client, not both" })
  }
  const maxLen = options.maxLen === undefined ? undefined : positiveInt("maxLen", options.maxLen, 0)
  const blockMs = positiveInt("blockMs", options.blockMs, 2_000)
  const claimIdleMs = positiveInt("claimIdleMs", options.claimIdleMs, 30_000, 100)
  const dedupeTtlMs = positiveInt("dedupeTtlMs", options.dedupeTtlMs, 600_000, 1_000)
  const consumerIdleMs = positiveInt("consumerIdleMs", options.consumerIdleMs, 3_600_000, 1_000)
  const pageSize = positiveInt("pageSize", options.pageSize, 500)
  const connectTimeoutMs = positiveInt("connectTimeoutMs", options.connectTimeoutMs, 10_000)
  for (const v of [maxLen, blockMs, claimIdleMs, dedupeTtlMs, consumerIdleMs, pageSize, connectTimeoutMs]) {
    if (v instanceof ConfigError) return v
  }
  return {
    url: options.url ?? "redis://127.0.0.1:6379",
    client: options.client,
    keyPrefix,
    maxLen: maxLen as number | undefined,
    blockMs: blockMs as number,
    claimIdleMs: claimIdleMs as number,
    dedupeTtlMs: dedupeTtlMs as number,
    consumerIdleMs: consumerIdleMs as number,
    pageSize: pageSize as number,
    connectTimeoutMs: connectTimeoutMs as number,
    connectionName,
  }
}
