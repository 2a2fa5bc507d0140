import { ConfigError } from "@bus/core"
import type { NatsConnection, NodeConnectionOptions } from "@nats-io/transport-node"
import { deadLetterStreamName, defaultStreamName, validatePrefix, validateStreamName } from "./names.js"

/**
 * Options of {@link natsTransport} and their defaults.
 *
 * @module
 */

/** The JetStream stream that holds the events (created if missing, adopted if present). */
export interface NatsStreamOptions {
  /** Stream name (default: the subject prefix upper-cased with `.` → `_`, so `BUS`). */
  readonly name?: string
  /** `file` (default; survives restarts) or `memory`. Applies when the SDK creates the stream. */
  readonly storage?: "file" | "memory"
  /** Oldest event kept, in ms (default 0: no age limit). Cursors older than this expire. */
  readonly maxAge?: number
  /** Largest stream size in bytes (default -1: no limit). Oldest events go first. */
  readonly maxBytes?: number
  /** Replicas in a JetStream cluster: 1 (default), 3 or 5. */
  readonly replicas?: number
  /**
   * How long JetStream remembers an event id (`Nats-Msg-Id`) to drop a repeated send,
   * in ms (default 2 minutes). Must be longer than the relay's retry horizon: the
   * longest time between the first and the last send of one outbox row (a relay that
   * dies mid-batch leaves its rows leased for `leaseMs`, 30 s by default, before
   * another relay sends them again). See docs/nats.md.
   */
  readonly duplicateWindowMs?: number
  /** Oldest dead letter kept in the dead-letter stream, in ms (default 0: no limit). */
  readonly deadLetterMaxAge?: number
}

/** Options of the NATS JetStream transport. */
export interface NatsTransportOptions {
  /** Server URL(s), e.g. `nats://127.0.0.1:4222` (default `127.0.0.1:4222`). Ignored with `connection`. */
  readonly servers?: string | ReadonlyArray<string>
  /** Your own connection. The transport then never drains or closes it. */
  readonly connection?: NatsConnection
  /** Further client options for the connection the transport opens (auth, TLS, name, …). */
  readonly connectOptions?: Omit<NodeConnectionOptions, "servers">
  /** First subject token(s) (default `bus`): events go to `<prefix>.<tenant>.<channel>`. */
  readonly subjectPrefix?: string
  /** The event stream. */
  readonly stream?: NatsStreamOptions
  /**
   * Time a consumer-group member has to acknowledge a delivery before JetStream
   * redelivers it, in ms (default 30 s). Held deliveries are kept alive with
   * in-progress acks every third of it, so slow handlers are not redelivered.
   */
  readonly ackWaitMs?: number
  /**
   * Deliveries of one event to a group before JetStream stops (default -1: unlimited).
   * Retries and dead-lettering are the consumer's job (`maxAttempts` of `consume`);
   * when set, it must be above every consumer's `maxAttempts`. A retry asked for at
   * the last allowed delivery dead-letters the event instead.
   */
  readonly maxDeliver?: number
  /**
   * Unacknowledged deliveries of a group across all its members (`max_ack_pending`).
   * Default: the largest `concurrency` of a member, which keeps a group's channel order
   * (as on Postgres) while members still take over from each other. Raise it to let
   * members of one group work in parallel (order is then kept per member only).
   */
  readonly maxAckPending?: number
  /** Timeout of one JetStream request (publish, stream and consumer calls), in ms (default 5 s). */
  readonly requestTimeoutMs?: number
  /** How long a consumer-group pull waits for events before it is renewed, in ms (default 10 s, minimum 1 s). */
  readonly pullExpiresMs?: number
  /**
   * Events the shared log of a channel keeps for its subscribers in this process (default
   * 1024). The subscriptions of one channel in a process share one feed and its log; one
   * that falls further behind holds nothing and resumes from its own cursor when it reads
   * again.
   */
  readonly subscriberBuffer?: number
  /**
   * How often the transport checks that the event stream is still the one it knows, in ms
   * (default 5 s, minimum 100). A stream deleted or lost with the server's store is found
   * within this bound (sooner when a send or a reader runs into it, and right after a
   * reconnect), created again, and refilled from the outbox. See docs/nats.md, "Stream lost".
   */
  readonly streamCheckMs?: number
}

/** Options with defaults applied and checked. */
export interface ResolvedOptions {
  readonly prefix: string
  readonly streamName: string
  readonly deadLetterStreamName: string
  readonly storage: "file" | "memory"
  readonly maxAgeMs: number
  readonly maxBytes: number
  readonly replicas: number
  readonly duplicateWindowMs: number
  readonly deadLetterMaxAgeMs: number
  readonly explicit: {
    readonly storage: boolean
    readonly maxAge: boolean
    readonly maxBytes: boolean
    readonly replicas: boolean
    readonly duplicateWindow: boolean
  }
  readonly ackWaitMs: number
  readonly maxDeliver: number
  readonly maxAckPending: number | undefined
  readonly requestTimeoutMs: number
  readonly pullExpiresMs: number
  readonly subscriberBuffer: number
  readonly streamCheckMs: number
}

/** Default duplicate window: 2 minutes (JetStream's own default, stated explicitly). */
export const defaultDuplicateWindowMs = 2 * 60_000

const isWhole = (n: unknown, min: number): n is number =>
  typeof n === "number" && Number.isSafeInteger(n) && n >= min

/** Applies defaults and checks every option; fails with `ConfigError` naming the bad one. */
export const resolveOptions = (options: NatsTransportOptions): ResolvedOptions | ConfigError => {
  const prefix = validatePrefix(options.subjectPrefix ?? "bus")
  if (prefix instanceof ConfigError) return prefix
  const s = options.stream ?? {}
  const streamName = validateStreamName(s.name ?? defaultStreamName(prefix))
  if (streamName instanceof ConfigError) return streamName
  const bad = (message: string) => new ConfigError({ message: `nats: ${message}` })
  const storage = s.storage ?? "file"
  if (storage !== "file" && storage !== "memory") return bad(`stream.storage must be "file" or "memory"`)
  const maxAgeMs = s.maxAge ?? 0
  if (!isWhole(maxAgeMs, 0)) return bad("stream.maxAge must be a whole number of ms ≥ 0 (0: no limit)")
  const maxBytes = s.maxBytes ?? -1
  if (!(maxBytes === -1 || isWhole(maxBytes, 1)))
    return bad("stream.maxBytes must be -1 or a positive integer")
  const replicas = s.replicas ?? 1
  if (!isWhole(replicas, 1) || replicas > 5) return bad("stream.replicas must be an integer from 1 to 5")
  const duplicateWindowMs = s.duplicateWindowMs ?? defaultDuplicateWindowMs
  if (!isWhole(duplicateWindowMs, 1_000))
    return bad("stream.duplicateWindowMs must be a whole number of ms ≥ 1000")
  if (maxAgeMs > 0 && duplicateWindowMs > maxAgeMs) {
    return bad(
      `stream.duplicateWindowMs (${duplicateWindowMs}) cannot exceed stream.maxAge (${maxAgeMs}): JetStream forgets ids with the events`,
    )
  }
  const deadLetterMaxAgeMs = s.deadLetterMaxAge ?? 0
  if (!isWhole(deadLetterMaxAgeMs, 0)) return bad("stream.deadLetterMaxAge must be a whole number of ms ≥ 0")
  if (deadLetterMaxAgeMs > 0 && duplicateWindowMs > deadLetterMaxAgeMs) {
    return bad("stream.deadLetterMaxAge cannot be below stream.duplicateWindowMs")
  }
  const ackWaitMs = options.ackWaitMs ?? 30_000
  if (!isWhole(ackWaitMs, 1_000)) return bad("ackWaitMs must be a whole number of ms ≥ 1000")
  const maxDeliver = options.maxDeliver ?? -1
  if (!(maxDeliver === -1 || isWhole(maxDeliver, 2))) return bad("maxDeliver must be -1 (unlimited) or ≥ 2")
  const maxAckPending = options.maxAckPending
  if (maxAckPending !== undefined && !isWhole(maxAckPending, 1)) return bad("maxAckPending must be ≥ 1")
  const requestTimeoutMs = options.requestTimeoutMs ?? 5_000
  if (!isWhole(requestTimeoutMs, 100)) return bad("requestTimeoutMs must be a whole number of ms ≥ 100")
  const pullExpiresMs = options.pullExpiresMs ?? 10_000
  if (!isWhole(pullExpiresMs, 1_000)) return bad("pullExpiresMs must be a whole number of ms ≥ 1000")
  const subscriberBuffer = options.subscriberBuffer ?? 1024
  if (!isWhole(subscriberBuffer, 1)) return bad("subscriberBuffer must be a whole number ≥ 1")
  const streamCheckMs = options.streamCheckMs ?? 5_000
  if (!isWhole(streamCheckMs, 100)) return bad("streamCheckMs must be a whole number of ms ≥ 100")
  if (options.connection !== undefined && options.servers !== undefined) {
    return bad("pass either servers or connection, not both")
  }
  return {
    prefix,
    streamName,
    deadLetterStreamName: deadLetterStreamName(streamName),
    storage,
    maxAgeMs,
    maxBytes,
    replicas,
    duplicateWindowMs,
    deadLetterMaxAgeMs,
    explicit: {
      storage: s.storage !== undefined,
      maxAge: s.maxAge !== undefined,
      maxBytes: s.maxBytes !== undefined,
      replicas: s.replicas !== undefined,
      duplicateWindow: s.duplicateWindowMs !== undefined,
    },
    ackWaitMs,
    maxDeliver,
    maxAckPending,
    requestTimeoutMs,
    pullExpiresMs,
    subscriberBuffer,
    streamCheckMs,
  }
}
