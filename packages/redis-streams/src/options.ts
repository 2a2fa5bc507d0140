import { ConfigError } from "@bus/core"
import type { Cluster, ClusterOptions, Redis } from "ioredis"
import type { ReplicaAck } from "./connection.js"
import { defaultKeyPrefix } from "./names.js"

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
  readonly client?: Redis | Cluster
  /**
   * Redis Cluster: the seed nodes to discover the cluster from, and how many replicas must
   * hold a relayed event before it counts as sent (see {@link RedisClusterOptions}). Passing
   * an ioredis `Cluster` as `client` turns cluster mode on too (then give no `nodes` here).
   * Not together with `url`.
   */
  readonly cluster?: RedisClusterOptions
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

/** Cluster mode of `redisStreamsTransport` (docs/redis.md, "Redis Cluster"). */
export interface RedisClusterOptions {
  /**
   * Seed nodes, e.g. `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]` (a few are enough;
   * the rest are discovered). Credentials and TLS (`rediss:`) are taken from the first URL.
   * Required unless `client` is an ioredis `Cluster`.
   */
  readonly nodes?: ReadonlyArray<string>
  /**
   * Replicas that must acknowledge a send (Redis `WAIT`) before the relay counts it as sent
   * (default 1). Replication is asynchronous: an entry acknowledged by a master that dies
   * before its replica has it is gone from the cluster. With `WAIT`, a send counts only once a
   * replica holds it, so a failed-over master loses nothing the relay considers sent; sends
   * that miss the acknowledgement fail (retryable) and the relay sends them again (dedupe
   * keeps that idempotent). 0 turns it off: faster, and a failover can then lose the newest
   * entries, which readers detect and recover from the outbox (docs/redis.md).
   */
  readonly minReplicas?: number
  /** How long a send waits for `minReplicas` acknowledgements before it fails, in ms (default 2 000). */
  readonly replicaAckTimeoutMs?: number
  /** Further ioredis `Cluster` options (e.g. `natMap`, `dnsLookup`, `redisOptions.tls`), over the transport's. */
  readonly clusterOptions?: ClusterOptions
}

/** Cluster mode with defaults applied. */
export interface ResolvedCluster {
  readonly nodes: ReadonlyArray<string>
  readonly minReplicas: number
  readonly replicaAckTimeoutMs: number
  readonly clusterOptions: ClusterOptions | undefined
}

/** Options with defaults applied. */
export interface ResolvedOptions {
  readonly url: string
  readonly client: Redis | Cluster | undefined
  /** Set in cluster mode (a `cluster` option, or a `Cluster` client). */
  readonly cluster: ResolvedCluster | undefined
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
  const clusterClient = options.client !== undefined && isClusterClient(options.client)
  let cluster: ResolvedCluster | undefined
  if (options.cluster !== undefined || clusterClient) {
    const c = options.cluster ?? {}
    if (options.url !== undefined) {
      return new ConfigError({ message: "redis-streams: pass either url or cluster, not both" })
    }
    if (options.client !== undefined && !clusterClient) {
      return new ConfigError({
        message:
          "redis-streams: cluster mode needs an ioredis Cluster as client (or cluster.nodes and no client)",
      })
    }
    const nodes = c.nodes ?? []
    if (clusterClient && nodes.length > 0) {
      return new ConfigError({
        message: "redis-streams: pass either a Cluster client or cluster.nodes, not both",
      })
    }
    if (!clusterClient && (!Array.isArray(nodes) || nodes.length === 0)) {
      return new ConfigError({ message: "redis-streams: cluster.nodes must list at least one node URL" })
    }
    for (const node of nodes) {
      if (typeof node !== "string" || !/^rediss?:\/\/[^/\s]+/.test(node)) {
        return new ConfigError({
          message: `redis-streams: cluster.nodes must be redis:// or rediss:// URLs, got ${JSON.stringify(node)}`,
        })
      }
    }
    const minReplicas = positiveInt("cluster.minReplicas", c.minReplicas, 1, 0)
    if (minReplicas instanceof ConfigError) return minReplicas
    const replicaAckTimeoutMs = positiveInt("cluster.replicaAckTimeoutMs", c.replicaAckTimeoutMs, 2_000)
    if (replicaAckTimeoutMs instanceof ConfigError) return replicaAckTimeoutMs
    cluster = { nodes, minReplicas, replicaAckTimeoutMs, clusterOptions: c.clusterOptions }
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
    cluster,
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

/** True for an ioredis `Cluster` (checked by its flag, so a client of another ioredis copy counts too). */
export const isClusterClient = (client: Redis | Cluster): client is Cluster =>
  (client as { isCluster?: boolean }).isCluster === true

/** The replica acknowledgement writes wait for (cluster mode with `minReplicas` > 0), or undefined. */
export const replicaAck = (config: ResolvedOptions): ReplicaAck | undefined =>
  config.cluster === undefined || config.cluster.minReplicas === 0
    ? undefined
    : { minReplicas: config.cluster.minReplicas, timeoutMs: config.cluster.replicaAckTimeoutMs }
