import { type BusError, TransportFailure, TransportUnavailable } from "@bus/core"
import { Metrics, type RetryOptions, retryWhileRetryable } from "@bus/core/adapter"
import { Effect, Metric, type Scope } from "effect"
import type { Cluster, Redis } from "ioredis"
import { toBusError, transportName } from "./errors.js"
import type { ChannelKeys } from "./names.js"
import type { LuaScript } from "./scripts.js"

/**
 * Connections and commands of the Redis Streams transport (its errors: errors.ts).
 *
 * @module
 */

/** A client of one Redis server, or of a Redis Cluster (commands routed by key slot). */
export type Client = Redis | Cluster

/** True for an ioredis `Cluster`. */
export const isCluster = (client: Client): client is Cluster =>
  (client as { isCluster?: boolean }).isCluster === true

/**
 * A pipeline on a cluster client goes to the node its keys' slot maps to, and ioredis
 * follows a MOVED reply for a pipeline only when all of it was read-only: for the writes
 * here the reply comes back as an error, and the slot map would stay stale (ioredis
 * refreshes it on its own only after a single command's redirection). Refreshed here, so
 * the retry goes to the new owner.
 */
export const refreshOnMoved = (conn: Client, errors: ReadonlyArray<unknown>): void => {
  if (!isCluster(conn)) return
  for (const error of errors) {
    // READONLY, or WAIT refused as on a replica: the write went to a replica, the map is stale.
    if (
      error instanceof Error &&
      /^(MOVED|ASK|CLUSTERDOWN|READONLY) |used with replica/.test(error.message)
    ) {
      conn.refreshSlotsCache()
      return
    }
  }
}

/** Runs one command promise, failing with a {@link BusError}. */
export const command = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, BusError> =>
  Effect.tryPromise({ try: run, catch: (e) => toBusError(e, what) })

/** Runs a Lua script with EVALSHA, loading it with EVAL when the server does not know it (yet). */
export const runScript = (
  conn: Client,
  script: LuaScript,
  keys: ReadonlyArray<string>,
  args: ReadonlyArray<string | number>,
): Effect.Effect<unknown, BusError> =>
  command(`${script.name} script`, async () => {
    try {
      return await conn.evalsha(script.sha, keys.length, ...keys, ...args)
    } catch (error) {
      if (error instanceof Error && error.message.startsWith("NOSCRIPT")) {
        return await conn.eval(script.lua, keys.length, ...keys, ...args)
      }
      throw error
    }
  })

/**
 * How many replicas a write must reach before it counts (Redis `WAIT`), and for how long to
 * wait: set in cluster mode (see `RedisClusterOptions.minReplicas`).
 */
export interface ReplicaAck {
  readonly minReplicas: number
  readonly timeoutMs: number
}

/** The error of a write that `WAIT` did not see reach enough replicas: retryable, the write is repeated. */
export const notReplicated = (what: string, acked: unknown, ack: ReplicaAck): TransportFailure =>
  new TransportFailure({
    transport: transportName,
    retryable: true,
    message: `${what}: acknowledged by ${Number(acked) || 0} of the ${ack.minReplicas} replica(s) required within ${ack.timeoutMs} ms; not counted as sent (a failover could lose it), it is sent again`,
  })

/**
 * The error of a write whose `WAIT` itself failed, so nothing says the write is anywhere:
 * unconfirmed, hence retryable like {@link notReplicated}, whatever WAIT's own reply was.
 * The case that made this necessary: right after its connections were killed, the cluster
 * client has no connection to a slot's master and sends the pipeline to a node it still
 * has, which may be that master's replica (its connection is READONLY, so the script runs
 * there and its XADD is refused with READONLY, which the script reports as its result), and
 * WAIT answers "ERR WAIT cannot be used with replica instances". Judged as a reply of its
 * own that ERR is permanent, and the relay parked a committed event that only needed
 * sending again. Only a credential or ACL refusal (`ConfigError`) stays what it is.
 */
export const waitFailed = (what: string, error: unknown, ack: ReplicaAck): BusError => {
  const mapped = toBusError(error, `${what}: WAIT`)
  if (mapped._tag === "ConfigError") return mapped
  return new TransportFailure({
    transport: transportName,
    retryable: true,
    message: `${mapped.message}; the write is unconfirmed (${ack.minReplicas} replica acknowledgement(s) required), not counted as sent, it is sent again`,
    cause: error,
  })
}

/**
 * {@link runScript} followed, on the same node connection, by `WAIT`: the script's writes
 * reach `ack.minReplicas` replicas before it resolves. With `strict`, fewer acknowledgements
 * fail it with a retryable error; otherwise they are ignored (best effort).
 */
export const runScriptReplicated = (
  conn: Client,
  script: LuaScript,
  keys: ReadonlyArray<string>,
  args: ReadonlyArray<string | number>,
  ack: ReplicaAck | undefined,
  strict: boolean,
): Effect.Effect<unknown, BusError> =>
  ack === undefined || ack.minReplicas === 0
    ? runScript(conn, script, keys, args)
    : command(`${script.name} script`, async () => {
        const attempt = async (first: "EVALSHA" | "EVAL") => {
          // One pipeline, so WAIT runs on the connection the script wrote on, right after it.
          const replies = (await conn
            .pipeline()
            .call(first, first === "EVALSHA" ? script.sha : script.lua, keys.length, ...keys, ...args)
            .call("WAIT", ack.minReplicas, ack.timeoutMs)
            .exec()) as Array<[Error | null, unknown]> | null
          const [ran, waited] = replies ?? []
          if (ran === undefined) throw new Error("no reply")
          return { ran, waited }
        }
        let { ran, waited } = await attempt("EVALSHA")
        if (ran[0] instanceof Error && ran[0].message.startsWith("NOSCRIPT"))
          ({ ran, waited } = await attempt("EVAL"))
        // A write that went to the wrong node (or a replica) is retried on a fresh slot map.
        refreshOnMoved(conn, [ran[0], waited?.[0]])
        if (ran[0]) throw ran[0]
        if (strict) {
          if (waited?.[0]) throw waitFailed(`${script.name} script`, waited[0], ack)
          if (Number(waited?.[1]) < ack.minReplicas)
            throw notReplicated(`${script.name} script`, waited?.[1], ack)
        }
        return ran[1]
      })

/** Redis fails over in seconds: its retries wait at most 2 s (core's schedule, jittered). */
const transient: RetryOptions = { max: "2 seconds" }

/** Retries `effect` while it fails with a retryable error, on core's schedule, for ever. */
export const retryTransient = <A, R>(
  effect: Effect.Effect<A, BusError, R>,
  what: string,
): Effect.Effect<A, BusError, R> => retryWhileRetryable(effect, `redis-streams: ${what}`, transient)

/**
 * A connection this transport owns, duplicated from `base` (same server, credentials and
 * TLS): commands wait through reconnects instead of failing after a number of retries,
 * and replies use RESP2 shapes. Closed when the scope closes. Blocking reads always run
 * on such a connection, never on the shared one. A command in flight when the connection
 * drops is sent again after the reconnect.
 */
export const ownedConnection = (base: Client, name: string): Effect.Effect<Client, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const own = {
        connectionName: name,
        maxRetriesPerRequest: null,
        enableOfflineQueue: true,
        // Without it, ioredis drops the commands in flight when the connection drops and
        // their promises never settle (with maxRetriesPerRequest null): reads would hang.
        autoResendUnfulfilledCommands: true,
        commandTimeout: undefined,
        protocol: 2 as const,
      }
      // On a cluster, a blocking read holds the connection to its node: it gets a cluster
      // client of its own (connections to the nodes it reads from, opened on first use). A
      // node connection that drops fails its commands with "Connection is closed", which the
      // cluster client sends again (to the new master after a failover).
      const conn: Client = isCluster(base)
        ? base.duplicate([], {
            ...base.options,
            enableOfflineQueue: true,
            redisOptions: { ...base.options.redisOptions, ...own },
          })
        : base.duplicate({ ...own, lazyConnect: false })
      // Errors surface through the commands that fail; without a listener ioredis prints them.
      conn.on("error", () => {})
      return conn
    }),
    (conn) => Effect.sync(() => conn.disconnect()),
  )

/** Closes a connection: QUIT when it is up (pending replies are delivered), then a hard disconnect. */
export const closeConnection = (conn: Client): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (conn.status === "end") return Effect.void
    const quit =
      conn.status === "ready"
        ? Effect.tryPromise(() => conn.quit()).pipe(Effect.timeout("2 seconds"), Effect.ignore)
        : Effect.void
    return quit.pipe(Effect.ensuring(Effect.sync(() => conn.disconnect())))
  })

/** A stream entry as Redis returns it: its id and its flat field/value list. */
export interface RawEntry {
  readonly id: string
  readonly fields: ReadonlyArray<string>
}

const asEntry = (u: unknown): RawEntry | undefined => {
  if (!Array.isArray(u) || typeof u[0] !== "string") return undefined
  const fields = Array.isArray(u[1]) ? u[1].map((f: unknown) => String(f)) : []
  return { id: u[0], fields }
}

/** Entries of an XRANGE reply (or any list of `[id, fields]`). */
export const parseEntries = (reply: unknown): Array<RawEntry> => {
  if (!Array.isArray(reply)) return []
  const out: Array<RawEntry> = []
  for (const item of reply) {
    const entry = asEntry(item)
    if (entry) out.push(entry)
  }
  return out
}

/**
 * Entries of an XREAD / XREADGROUP reply for one stream, in either shape ioredis may
 * return: RESP2 `[[key, entries]]` or RESP3 flattened `[key, entries]`; `null` on timeout.
 */
export const parseReadReply = (reply: unknown): Array<RawEntry> => {
  if (!Array.isArray(reply) || reply.length === 0) return []
  if (typeof reply[0] === "string") return parseEntries(reply[1])
  const out: Array<RawEntry> = []
  for (const streamReply of reply) {
    if (Array.isArray(streamReply)) out.push(...parseEntries(streamReply[1]))
  }
  return out
}

/** A field of an entry, or undefined. */
export const fieldOf = (entry: RawEntry, name: string): string | undefined => {
  for (let i = 0; i + 1 < entry.fields.length; i += 2)
    if (entry.fields[i] === name) return entry.fields[i + 1]
  return undefined
}

/**
 * Counts the times `conn` lost its connection, for the life of the scope: a reply lost
 * with a connection (the entries an XREADGROUP assigned, a claim) is noticed by comparing
 * the count before and after.
 */
export const connectionLosses = (
  conn: Client,
): Effect.Effect<{ readonly count: number }, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const counter = { count: 0 }
      const onClose = () => {
        counter.count++
      }
      const onReconnecting = () => {
        Effect.runSync(Metric.update(reconnectsMetric, 1))
      }
      conn.on("close", onClose)
      conn.on("reconnecting", onReconnecting)
      // A cluster client stays up while one of its node connections drops (a killed master):
      // the node leaves the pool, and what was in flight on it may have run without a reply.
      conn.on("-node", onClose)
      return { counter, onClose, onReconnecting }
    }),
    ({ onClose, onReconnecting }) =>
      Effect.sync(() => {
        conn.off("close", onClose)
        conn.off("reconnecting", onReconnecting)
        conn.off("-node", onClose)
      }),
  ).pipe(Effect.map(({ counter }) => counter))

const reconnectsMetric = Metric.withAttributes(Metrics.reconnects, { transport: transportName })

/**
 * How long a read may take beyond its BLOCK time before it counts as lost (see
 * `readWithIdentity`): generous, as a loaded server or machine can be slow to answer.
 */
export const replyMarginMs = 10_000

/** The reply of one pipelined read: the entries, then the stream's identity and whether the stream exists. */
export const readWithIdentity = (
  what: string,
  conn: Client,
  read: ReadonlyArray<string | number>,
  keys: ChannelKeys,
  replyTimeoutMs: number,
): Effect.Effect<
  { readonly reply: unknown; readonly identity: string | null; readonly exists: boolean },
  BusError
> =>
  command(what, async () => {
    // One round trip: the identity is read right after the entries, on the same connection,
    // so entries of a stream that replaced a lost one never pass under the old identity.
    const replies = (await conn
      .pipeline()
      .call(String(read[0]), ...read.slice(1))
      .get(keys.identity)
      .exists(keys.stream)
      .exec()) as Array<[Error | null, unknown]> | null
    const [readReply, identityReply, existsReply] = replies ?? []
    refreshOnMoved(conn, [readReply?.[0], identityReply?.[0], existsReply?.[0]])
    for (const r of [readReply, identityReply, existsReply]) if (r?.[0]) throw r[0]
    if (readReply === undefined) throw new Error("no reply")
    return {
      reply: readReply[1],
      identity: typeof identityReply?.[1] === "string" ? identityReply[1] : null,
      exists: Number(existsReply?.[1]) === 1,
    }
  }).pipe(
    // A pipeline on a cluster client whose node died can stay unanswered (ioredis re-sends
    // it after the failover, and may never settle it): the read gives up after a bound and
    // the caller retries (and, for a group, re-reads its own pending entries).
    Effect.timeoutOrElse({
      duration: replyTimeoutMs,
      orElse: () =>
        Effect.fail(
          new TransportUnavailable({
            transport: transportName,
            message: `${what}: no reply within ${replyTimeoutMs} ms`,
          }),
        ),
    }),
  )
