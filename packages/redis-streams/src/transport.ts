import { type BusError, ConfigError, PayloadTooLarge, TransportUnavailable } from "@bus/core"
import {
  attachFeedCursor,
  capabilities,
  checkAddress,
  defaultMaxPayloadBytes,
  type Envelope,
  OutboxReader,
  OutboxRelay,
  prepareSends,
  type SendItem,
  type SendMeta,
  type SendOutcome,
  Transport,
} from "@bus/core/adapter"
import { Cause, Effect, Layer } from "effect"
import { Cluster, Redis } from "ioredis"
import {
  type Client,
  closeConnection,
  command,
  connectionLosses,
  isCluster,
  notReplicated,
  ownedConnection,
  refreshOnMoved,
  runScriptReplicated,
  waitFailed,
} from "./connection.js"
import { listDeadLetters } from "./deadLetters.js"
import { toBusError, transportName } from "./errors.js"
import { groupMember } from "./group.js"
import { channelKeys } from "./names.js"
import { type RedisStreamsOptions, type ResolvedOptions, replicaAck, resolveOptions } from "./options.js"
import { sendBatchScript, sendScript } from "./scripts.js"
import { makeSubscribe } from "./subscribe.js"
import { encodeEntry } from "./wire.js"

/**
 * The Redis Streams transport: one stream per tenant channel, filled by the core relay
 * from the outbox with an idempotent script, read by subscriptions (XREAD) and consumer
 * groups (XREADGROUP with claims, retries and a dead-letter stream).
 *
 * @module
 */

/** Events per call of the batch send script: a call stays short, so other clients wait little behind it. */
const eventsPerCall = 128

/** What `redisStreamsTransport` declares about itself. */
export const redisStreamsCapabilities = capabilities(transportName, {
  needsRelay: true,
  dedupesSends: true,
  consumerGroups: true,
  replay: true,
  ordering: "per-transaction",
  maxPayloadBytes: defaultMaxPayloadBytes,
})

/**
 * The Redis Streams transport as a Layer. Connections are opened when the layer is built
 * (it fails with `TransportUnavailable` when the server does not answer within
 * `connectTimeoutMs`) and closed when its scope closes; a `client` you pass is used but
 * never closed.
 *
 * @example
 * ```ts
 * import { redisStreamsTransport } from "@bus/redis-streams/adapter"
 *
 * // Applications pass `redisStreams({ url })` to `createBus`; the layer is for Effect tools and tests.
 * const layer = redisStreamsTransport({ url: "redis://127.0.0.1:6379" })
 * ```
 */
export const redisStreamsTransport = (options: RedisStreamsOptions = {}): Layer.Layer<Transport, BusError> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const config = resolveOptions(options)
      if (config instanceof ConfigError) return yield* config
      const main: Client =
        config.client ??
        (yield* Effect.acquireRelease(
          Effect.sync(() => {
            const conn = openClient(config)
            conn.on("error", () => {})
            return conn
          }),
          closeConnection,
        ))
      const ack = replicaAck(config)
      /**
       * Sends that wait for replicas (`WAIT`) run on a cluster connection of their own: WAIT
       * holds the connection it runs on until the replicas answer (up to
       * `replicaAckTimeoutMs` while a master has none, e.g. right after a failover), and on
       * the shared one it would hold up every other command for that node (acks, claims, reads).
       */
      const sender: Client =
        ack === undefined ? main : yield* ownedConnection(main, `${config.connectionName}-send`)
      yield* command("PING", () => main.ping()).pipe(
        Effect.timeoutOrElse({
          duration: config.connectTimeoutMs,
          orElse: () =>
            Effect.fail(
              new TransportUnavailable({
                transport: transportName,
                message: `no answer from Redis within ${config.connectTimeoutMs} ms`,
              }),
            ),
        }),
      )
      const store = yield* Effect.serviceOption(OutboxReader)
      const relay = yield* Effect.serviceOption(OutboxRelay)
      const mainLosses = yield* connectionLosses(main)
      const { head, checkStart, subscribe, openCursor, stats } = yield* makeSubscribe(main, config, store)
      const maxLen = config.maxLen ?? 0

      const send = (event: Envelope, meta?: SendMeta): Effect.Effect<void, BusError> =>
        Effect.gen(function* () {
          const address = yield* checkAddress(event)
          const keys = channelKeys(config.keyPrefix, address)
          const entry = encodeEntry(event)
          const tooLarge = overLimit(event, entry.envelope)
          if (tooLarge !== undefined) return yield* tooLarge
          yield* runScriptReplicated(
            sender,
            sendScript,
            [keys.stream, keys.dedupe(event.id)],
            [
              config.dedupeTtlMs,
              maxLen,
              entry.id,
              entry.envelope,
              meta?.position ?? "",
              meta?.frontier ?? "",
            ],
            ack,
            true,
          )
        })

      /**
       * A run of sends as a few calls of the batch script (up to `eventsPerCall` events of one
       * stream each), pipelined on the main connection: Redis runs one connection's commands
       * in order, so the entries land in the order given, and a batch costs one script call
       * per chunk instead of one per event. The chunks before the first failed call count as
       * sent; a failed call appended the events before its error and marked them, so sending
       * the rest again appends each event once (later calls that did run are dropped as
       * repeats by their dedupe keys — behind the re-sent ones, a rare reorder that needs a
       * call to fail while a later one succeeds). A server that lost its script cache
       * (NOSCRIPT) gets the script loaded and the rest sent again (on a cluster: sent with EVAL).
       */
      const sendAll = (
        items: ReadonlyArray<SendItem>,
        onSent?: (sent: number) => void,
      ): Effect.Effect<SendOutcome> =>
        Effect.gen(function* () {
          let done = 0
          let withEval = false
          for (let reloads = 0; ; reloads++) {
            const { prepared, invalid } = prepareSends(
              items,
              done,
              (address) => channelKeys(config.keyPrefix, address),
              ({ event, meta }, keys) => {
                const entry = encodeEntry(event)
                const tooLarge = overLimit(event, entry.envelope)
                if (tooLarge !== undefined) return tooLarge
                return {
                  stream: keys.stream,
                  dedupe: keys.dedupe(event.id),
                  fields: [entry.id, entry.envelope, meta?.position ?? "", meta?.frontier ?? ""] as const,
                }
              },
            )
            // Up to `eventsPerCall` events of one stream per call of the batch script.
            const calls: Array<{ readonly count: number; readonly argv: Array<string | number> }> = []
            let stream: string | undefined
            let call: { count: number; argv: Array<string | number>; dedupes: Array<string> } | undefined
            const close = () => {
              if (call === undefined) return
              calls.push({
                count: call.count,
                argv: [sendBatchScript.sha, call.count + 1, stream!, ...call.dedupes, ...call.argv],
              })
              call = undefined
            }
            for (const p of prepared) {
              if (call !== undefined && (p.stream !== stream || call.count >= eventsPerCall)) close()
              if (call === undefined) {
                stream = p.stream
                call = { count: 0, argv: [config.dedupeTtlMs, maxLen], dedupes: [] }
              }
              call.count++
              call.dedupes.push(p.dedupe)
              call.argv.push(...p.fields)
            }
            close()
            if (calls.length === 0)
              return invalid === undefined ? { sent: done } : { sent: done, error: invalid }
            const replies = yield* Effect.exit(
              execCalls(
                calls.map((c) => c.argv),
                withEval,
              ),
            )
            if (replies._tag === "Failure") {
              return {
                sent: done,
                error: toBusError(Cause.squash(replies.cause), `${sendBatchScript.name} script`),
              }
            }
            // Whole calls that went through, then how far the first one that did not got.
            let ok = 0
            let sent = 0
            let failure: unknown
            for (; ok < calls.length; ok++) {
              const reply = replies.value[ok]
              if (reply === undefined || reply[0] !== null) break
              const [through, message] = reply[1] as [number, string | undefined]
              if (message === undefined) {
                sent += calls[ok]!.count
                continue
              }
              sent += Number(through)
              // The server's refusal of that event's XADD, judged as its own reply would be.
              failure = Object.assign(new Error(message), { name: "ReplyError" })
              break
            }
            done += sent
            if (sent > 0) onSent?.(done)
            if (ok === calls.length)
              return invalid === undefined ? { sent: done } : { sent: done, error: invalid }
            if (failure !== undefined)
              return { sent: done, error: toBusError(failure, `${sendBatchScript.name} script`) }
            const error = replies.value[ok]?.[0] ?? new Error("no reply")
            if (error instanceof Error && error.message.startsWith("NOSCRIPT") && reloads < 3) {
              // On a cluster every master has its own script cache, and the client may not
              // know every master yet (a replica promoted a moment ago): the rest is sent with
              // EVAL, which loads the script on whichever node runs it.
              if (isCluster(main)) {
                withEval = true
                continue
              }
              const loaded = yield* Effect.exit(
                command("script load", () => main.script("LOAD", sendBatchScript.lua)),
              )
              if (loaded._tag === "Success") continue
            }
            return { sent: done, error: toBusError(error, `${sendBatchScript.name} script`) }
          }
        })

      /**
       * The replies of the batch-script calls, in the order given. On one server: one pipeline.
       * On a cluster a pipeline must stay on one node, so each stream's calls are a pipeline of
       * their own (streams of different tenants usually live on different nodes), run side by
       * side; Redis runs one connection's commands in order, so each stream's entries still land
       * in the order given. With a replica acknowledgement required, each pipeline ends with
       * `WAIT`, and the calls of a pipeline whose writes did not reach enough replicas in time
       * count as failed (retryable): the relay sends them again, and the dedupe keys make that
       * append only what the failover lost.
       */
      const execCalls = (
        argvs: ReadonlyArray<ReadonlyArray<string | number>>,
        withEval: boolean,
      ): Effect.Effect<Array<[Error | null, unknown]>, BusError> =>
        command(`${sendBatchScript.name} script`, async () => {
          if (!isCluster(sender)) {
            const pipeline = sender.pipeline()
            for (const argv of argvs) pipeline.call("EVALSHA", ...argv)
            return ((await pipeline.exec()) ?? []) as Array<[Error | null, unknown]>
          }
          const byStream = new Map<string, Array<number>>()
          argvs.forEach((argv, index) => {
            const stream = String(argv[2])
            const indexes = byStream.get(stream)
            if (indexes === undefined) byStream.set(stream, [index])
            else indexes.push(index)
          })
          const out: Array<[Error | null, unknown]> = argvs.map(() => [new Error("no reply"), null])
          const waitErrors: Array<Error> = []
          await Promise.all(
            [...byStream.values()].map(async (indexes) => {
              const pipeline = sender.pipeline()
              for (const index of indexes) {
                const [, ...rest] = argvs[index]!
                if (withEval) pipeline.call("EVAL", sendBatchScript.lua, ...rest)
                else pipeline.call("EVALSHA", ...argvs[index]!)
              }
              if (ack !== undefined) pipeline.call("WAIT", ack.minReplicas, ack.timeoutMs)
              let replies: Array<[Error | null, unknown]>
              try {
                replies = ((await pipeline.exec()) ?? []) as Array<[Error | null, unknown]>
              } catch (error) {
                const failed = error instanceof Error ? error : new Error(String(error))
                for (const index of indexes) out[index] = [failed, null]
                return
              }
              indexes.forEach((index, i) => {
                out[index] = replies[i] ?? [new Error("no reply"), null]
              })
              if (ack === undefined) return
              const waited = replies[indexes.length]
              const acked = waited?.[0] ? 0 : Number(waited?.[1])
              if (acked >= ack.minReplicas) return
              const what = `${sendBatchScript.name} script`
              const failed = waited?.[0] ? waitFailed(what, waited[0], ack) : notReplicated(what, acked, ack)
              // Calls that failed on their own keep their error; the rest are unconfirmed
              // (retryable, never WAIT's own reply judged as permanent: see waitFailed).
              for (const index of indexes) if (out[index]![0] === null) out[index] = [failed, null]
              if (waited?.[0]) waitErrors.push(waited[0])
            }),
          )
          refreshOnMoved(sender, [...out.map(([error]) => error), ...waitErrors])
          return out
        })

      // The Promise facade pulls subscriptions straight from the feeds' logs (subscribe.ts).
      return attachFeedCursor(
        Transport.of({
          capabilities: redisStreamsCapabilities,
          head,
          checkStart,
          subscribe,
          group: (request) => groupMember({ main, config, mainLosses, store, relay, sendAll }, request),
          send,
          sendAll,
          deadLetters: (limit) => listDeadLetters(main, config.keyPrefix, limit),
        }),
        openCursor,
        stats,
      )
    }),
  )

/** `PayloadTooLarge` for an event whose encoded envelope is over what the transport carries. */
const overLimit = (event: Envelope, envelope: string): PayloadTooLarge | undefined => {
  const bytes = Buffer.byteLength(envelope, "utf8")
  const limit = redisStreamsCapabilities.maxPayloadBytes
  return bytes > limit
    ? new PayloadTooLarge({
        bytes,
        limit,
        message: `event ${event.id} is ${bytes} bytes encoded; redis-streams carries at most ${limit}`,
      })
    : undefined
}

/** The shared client: one server, or a cluster client discovering the nodes from the seeds. */
const openClient = (config: ResolvedOptions): Client => {
  if (config.cluster === undefined) {
    return new Redis(config.url, {
      connectionName: config.connectionName,
      maxRetriesPerRequest: null,
      connectTimeout: config.connectTimeoutMs,
    })
  }
  const seeds = config.cluster.nodes.map((node) => new URL(node))
  const first = seeds[0]!
  return new Cluster(
    seeds.map((url) => ({ host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 6379) })),
    {
      // Commands wait through a failover (CLUSTERDOWN, MOVED, a closed node connection) and
      // are retried by the cluster client, then by the transport's own bounded backoff.
      enableOfflineQueue: true,
      // A slot map gone stale (a failover nobody's command was redirected by) is noticed
      // within this long even without traffic to the moved slots.
      slotsRefreshInterval: 5_000,
      ...config.cluster.clusterOptions,
      redisOptions: {
        connectionName: config.connectionName,
        maxRetriesPerRequest: null,
        connectTimeout: config.connectTimeoutMs,
        ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
        ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
        ...(first.protocol === "rediss:" ? { tls: {} } : {}),
        ...config.cluster.clusterOptions?.redisOptions,
      },
    },
  )
}
