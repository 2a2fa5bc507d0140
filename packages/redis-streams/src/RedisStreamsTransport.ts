import {
  type BusError,
  ConfigError,
  capabilities,
  checkAddress,
  defaultMaxPayloadBytes,
  type Envelope,
  OutboxStore,
  PayloadTooLarge,
  type SendItem,
  type SendMeta,
  type SendOutcome,
  Transport,
  TransportUnavailable,
} from "@bus/core"
import { Cause, Effect, Layer } from "effect"
import { Redis } from "ioredis"
import { encodeEntry } from "./codec.js"
import {
  closeConnection,
  command,
  connectionLosses,
  runScript,
  toBusError,
  transportName,
} from "./connection.js"
import { listDeadLetters } from "./deadLetters.js"
import { groupMember } from "./group.js"
import { channelKeys } from "./keys.js"
import { type RedisStreamsOptions, resolveOptions } from "./options.js"
import { sendScript } from "./scripts.js"
import { makeSubscribe } from "./subscribe.js"

/**
 * The Redis Streams transport: one stream per tenant channel, filled by the core relay
 * from the outbox with an idempotent script, read by subscriptions (XREAD) and consumer
 * groups (XREADGROUP with claims, retries and a dead-letter stream).
 *
 * @module
 */

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
 * import { createBus } from "@bus/core"
 * import { postgresNotify } from "@bus/postgres-notify"
 * import { redisStreamsTransport } from "@bus/redis-streams"
 *
 * const bus = await createBus({
 *   outbox: postgresNotify({ connectionString: process.env.DATABASE_URL }).outbox,
 *   transports: { "redis-streams": redisStreamsTransport({ url: "redis://127.0.0.1:6379" }) },
 *   transport: "redis-streams",
 * })
 * ```
 */
export const redisStreamsTransport = (options: RedisStreamsOptions = {}): Layer.Layer<Transport, BusError> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const config = resolveOptions(options)
      if (config instanceof ConfigError) return yield* config
      const main =
        config.client ??
        (yield* Effect.acquireRelease(
          Effect.sync(() => {
            const conn = new Redis(config.url, {
              connectionName: config.connectionName,
              maxRetriesPerRequest: null,
              connectTimeout: config.connectTimeoutMs,
            })
            conn.on("error", () => {})
            return conn
          }),
          closeConnection,
        ))
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
      const store = yield* Effect.serviceOption(OutboxStore)
      const mainLosses = yield* connectionLosses(main)
      const { head, checkStart, subscribe } = yield* makeSubscribe(main, config, store)
      const maxLen = config.maxLen ?? 0

      const send = (event: Envelope, meta?: SendMeta): Effect.Effect<void, BusError> =>
        Effect.gen(function* () {
          const address = yield* checkAddress(event)
          const keys = channelKeys(config.keyPrefix, address)
          const entry = encodeEntry(event)
          const bytes = Buffer.byteLength(entry.envelope, "utf8")
          if (bytes > redisStreamsCapabilities.maxPayloadBytes) {
            return yield* new PayloadTooLarge({
              bytes,
              limit: redisStreamsCapabilities.maxPayloadBytes,
              message: `event ${event.id} is ${bytes} bytes encoded; redis-streams carries at most ${redisStreamsCapabilities.maxPayloadBytes}`,
            })
          }
          yield* runScript(
            main,
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
          )
        })

      /**
       * A run of sends pipelined on the main connection: Redis runs one connection's commands
       * in order, so the entries land in the order given and the replies say which did. The
       * prefix before the first failed script counts as sent; scripts after it that did run
       * are dropped as repeats (dedupe key) when the relay sends them again — behind the
       * re-sent one, a rare reorder that needs a script to fail while a later one succeeds.
       * A server that lost its script cache (NOSCRIPT) gets the script loaded and the rest sent
       * again.
       */
      const sendAll = (
        items: ReadonlyArray<SendItem>,
        onSent?: (sent: number) => void,
      ): Effect.Effect<SendOutcome> =>
        Effect.gen(function* () {
          let done = 0
          for (let reloads = 0; ; reloads++) {
            const args: Array<readonly [ReadonlyArray<string>, ReadonlyArray<string | number>]> = []
            let invalid: BusError | undefined
            for (let i = done; i < items.length; i++) {
              const { event, meta } = items[i]!
              const checked = yield* Effect.exit(checkAddress(event))
              if (checked._tag === "Failure") {
                invalid = toBusError(Cause.squash(checked.cause), `send ${event.id}`)
                break
              }
              const keys = channelKeys(config.keyPrefix, checked.value)
              const entry = encodeEntry(event)
              const bytes = Buffer.byteLength(entry.envelope, "utf8")
              if (bytes > redisStreamsCapabilities.maxPayloadBytes) {
                invalid = new PayloadTooLarge({
                  bytes,
                  limit: redisStreamsCapabilities.maxPayloadBytes,
                  message: `event ${event.id} is ${bytes} bytes encoded; redis-streams carries at most ${redisStreamsCapabilities.maxPayloadBytes}`,
                })
                break
              }
              args.push([
                [keys.stream, keys.dedupe(event.id)],
                [
                  config.dedupeTtlMs,
                  maxLen,
                  entry.id,
                  entry.envelope,
                  meta?.position ?? "",
                  meta?.frontier ?? "",
                ],
              ])
            }
            if (args.length === 0)
              return invalid === undefined ? { sent: done } : { sent: done, error: invalid }
            const replies = yield* Effect.exit(
              command(`${sendScript.name} script`, async () => {
                const pipeline = main.pipeline()
                for (const [keys, argv] of args)
                  pipeline.evalsha(sendScript.sha, keys.length, ...keys, ...argv)
                return (await pipeline.exec()) ?? []
              }),
            )
            if (replies._tag === "Failure") {
              return {
                sent: done,
                error: toBusError(Cause.squash(replies.cause), `${sendScript.name} script`),
              }
            }
            let ok = 0
            while (
              ok < args.length &&
              (replies.value[ok]?.[0] ?? null) === null &&
              replies.value[ok] !== undefined
            )
              ok++
            done += ok
            if (ok > 0) onSent?.(done)
            if (ok === args.length)
              return invalid === undefined ? { sent: done } : { sent: done, error: invalid }
            const error = replies.value[ok]?.[0] ?? new Error("no reply")
            if (error instanceof Error && error.message.startsWith("NOSCRIPT") && reloads < 3) {
              const loaded = yield* Effect.exit(
                command("script load", () => main.script("LOAD", sendScript.lua)),
              )
              if (loaded._tag === "Success") continue
            }
            return { sent: done, error: toBusError(error, `${sendScript.name} script`) }
          }
        })

      return Transport.of({
        capabilities: redisStreamsCapabilities,
        head,
        checkStart,
        subscribe,
        group: (request) => groupMember({ main, config, mainLosses, store, sendAll }, request),
        send,
        sendAll,
        deadLetters: (limit) => listDeadLetters(main, config.keyPrefix, limit),
      })
    }),
  )
