import { type BusError, ConfigError, TransportUnavailable } from "@bus/core"
import {
  attachFeedCursor,
  attachResendSignal,
  capabilities,
  checkAddress,
  type Envelope,
  OutboxReader,
  prepareSends,
  type RetryOptions,
  retryWhileRetryable,
  type SendItem,
  type SendMeta,
  type SendOutcome,
  Transport,
} from "@bus/core/adapter"
import { type JetStreamClient, jetstream, jetstreamManager } from "@nats-io/jetstream"
import { connect, type MsgHdrs } from "@nats-io/transport-node"
import { Effect, Layer } from "effect"
import { type AckMux, type AckResult, makeAckMux, type Publish, type Stored } from "./ackMux.js"

const isStored = (r: AckResult | undefined): r is Stored => r !== undefined && !(r instanceof Error)

import { type ConnectionWatch, watchConnection } from "./connection.js"
import { readDeadLetters } from "./deadLetters.js"
import { overMaxPayload, toBusError } from "./errors.js"
import { makeGroup } from "./group.js"
import { subjectOf } from "./names.js"
import { type NatsTransportOptions, type ResolvedOptions, resolveOptions } from "./options.js"
import { ensureStreams } from "./stream.js"
import { type StreamWatch, watchStream } from "./streamWatch.js"
import { makeSubscribe } from "./subscribe.js"
import {
  encodeEnvelope,
  headerBytes,
  headerReserveBytes,
  publishHeaderBlock,
  traceHeadersOf,
} from "./wire.js"

/**
 * The NATS JetStream transport as an Effect Layer.
 *
 * @module
 */

/** max_payload when the server does not say (its default). */
const defaultServerMaxPayload = 1024 * 1024

/**
 * An answer that may mean the stream is gone: no responder on the subject (no stream
 * listens to it; the client reports it as "jetstream is not enabled"), or "stream not
 * found". Timeouts and reconnects are left to the retry.
 */
const maybeStreamGone = (error: BusError): boolean =>
  /no responders|jetstream is not enabled|stream not found/i.test(error.message)

/** How long a send keeps retrying an unreachable server before the relay sees a failure. */
const sendRetryBudgetMs = 10_000

const openConnection = (options: NatsTransportOptions) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () =>
        connect({
          name: "@bus/nats",
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          reconnectJitter: 250,
          pingInterval: 20_000,
          maxPingOut: 3,
          // nats.js otherwise captures a stack trace for every request and publish (two Error
          // objects each): a large share of the relay's CPU per event.
          noAsyncTraces: true,
          ...options.connectOptions,
          servers:
            options.servers === undefined
              ? "127.0.0.1:4222"
              : [options.servers]
                  .flat()
                  .flatMap((s) => s.split(","))
                  .map((s) => s.trim())
                  .filter((s) => s.length > 0),
        }),
      catch: (e) => toBusError(e, "connect"),
    }),
    (nc) =>
      Effect.promise(async () => {
        if (nc.isClosed()) return
        // Drain flushes what is buffered (acks, naks of a stopping consumer) before closing.
        let timer: ReturnType<typeof setTimeout> | undefined
        await Promise.race([
          nc.drain().catch(() => {}),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, 5_000)
          }),
        ]).finally(() => clearTimeout(timer))
        if (!nc.isClosed()) await nc.close().catch(() => {})
      }),
  )

/** `send`: one JetStream publish with `Nats-Msg-Id` = event id; `sendAll`: a pipelined run of them. */
const makeSend = (
  conn: ConnectionWatch,
  js: JetStreamClient,
  mux: AckMux,
  o: ResolvedOptions,
  serverMaxPayload: number,
  watch: StreamWatch,
) => {
  /**
   * A stream leader election or a reconnect takes seconds: a send rides it out on core's
   * schedule rather than burning the relay's attempts (a re-send is harmless: the stream
   * drops it by id), until the connection is closed or the budget is spent.
   */
  const sendRetry = (started: number): RetryOptions => ({
    initial: "25 millis",
    max: "1 second",
    giveUp: () => conn.closed() || Date.now() - started > sendRetryBudgetMs,
  })
  /** The highest sequence an ack reported, on the stream of `generation`. */
  const highestSeq = { seq: 0, generation: watch.current().generation }
  const send = (event: Envelope, meta?: SendMeta): Effect.Effect<void, BusError> =>
    Effect.gen(function* () {
      const address = yield* checkAddress(event)
      const subject = subjectOf(o.prefix, address)
      const payload = encodeEnvelope(event)
      const total = payload.byteLength + headerBytes(event, meta)
      if (total > serverMaxPayload) return yield* overMaxPayload(event, total, serverMaxPayload)
      const headers = traceHeadersOf(event, meta)
      const published = Effect.tryPromise({
        try: () =>
          js.publish(subject, payload, {
            msgID: event.id,
            timeout: o.requestTimeoutMs,
            ...(headers === undefined ? {} : { headers }),
          }),
        catch: (e) => toBusError(e, `publish ${event.id} to ${subject}`),
      }).pipe(
        Effect.raceFirst(
          // A publish in flight when the connection dropped may never be answered: send it again.
          conn.nextReconnect.pipe(
            Effect.andThen(
              Effect.fail(
                new TransportUnavailable({
                  transport: "nats",
                  message: `nats: reconnected while publishing ${event.id}`,
                }),
              ),
            ),
          ),
        ),
      )
      const ack = yield* retryWhileRetryable(published, `nats: publish ${event.id}`, sendRetry(Date.now()))
      if (ack.stream !== o.streamName) {
        yield* Effect.logWarning(
          `nats: ${subject} is stored by stream ${ack.stream}, not ${o.streamName}; subscriptions read ${o.streamName}`,
        )
      }
    })
  /**
   * `sendAll`: the publishes written in order on the one connection (so the server stores
   * them in this order) through the transport's {@link AckMux}, at most `maxInFlight`
   * unanswered at a time, and their acks matched as they come: a round trip for the lot,
   * not one per event. The prefix up to the first failed ack counts as sent. A failure
   * retryable within the budget sends the rest again from the failed one: events after it
   * that did land are dropped by `Nats-Msg-Id`, but then sit before the re-sent one in the
   * stream — a rare reorder, only when one publish of a run fails while a later one
   * succeeds (an ack lost to a timeout).
   */
  const sendAll = (
    items: ReadonlyArray<SendItem>,
    onSent?: (sent: number) => void,
  ): Effect.Effect<SendOutcome> =>
    Effect.gen(function* () {
      let done = 0
      // The stream this run goes to: after a loss the relay rewinds first (streamWatch.ts), so
      // that the new stream gets the outbox in order; a retry must not go ahead of it.
      const generation = watch.current().generation
      if (highestSeq.generation !== generation) {
        highestSeq.generation = generation
        highestSeq.seq = 0
      }
      const retry = sendRetry(Date.now())
      const attempt: Effect.Effect<SendOutcome, BusError> = Effect.gen(function* () {
        const { prepared, invalid } = prepareSends(
          items,
          done,
          (address) => subjectOf(o.prefix, address),
          ({ event, meta }, subject): Publish | BusError => {
            const payload = encodeEnvelope(event)
            const block = publishHeaderBlock(event, meta)
            const total = payload.byteLength + block.byteLength
            if (total > serverMaxPayload) return overMaxPayload(event, total, serverMaxPayload)
            // `nc.publish` only encodes the headers it is given: hand it the block built once.
            const headers = { encode: () => block } as unknown as MsgHdrs
            return { subject, payload, id: event.id, headers }
          },
        )
        let prefix = 0
        let foreign: string | undefined
        let regressed = false
        const results: Array<AckResult | undefined> = new Array(prepared.length)
        yield* Effect.promise((signal) =>
          mux.publishAll(prepared, results, signal, (i) => {
            const result = results[i]
            if (result === undefined || result instanceof Error) return
            if (result.stream !== o.streamName)
              foreign = `${prepared[i]!.subject} is stored by stream ${result.stream}`
            // Sequences only grow in one stream: a new event stored lower went to another one.
            if (!result.duplicate) {
              if (result.seq <= highestSeq.seq && highestSeq.generation === generation) regressed = true
              highestSeq.seq = Math.max(highestSeq.seq, result.seq)
            }
            if (i !== prefix) return
            // Count the stored prefix as it grows (acks of one connection come in order).
            while (prefix < prepared.length && isStored(results[prefix])) prefix++
            onSent?.(done + prefix)
          }),
        ).pipe(
          // Publishes in flight when the connection dropped may never be answered: send them
          // again (what was acked before the drop stays counted).
          Effect.raceFirst(conn.nextReconnect),
        )
        if (regressed) {
          yield* watch.check("a publish was stored below an earlier sequence")
          if (watch.current().generation !== generation) {
            highestSeq.seq = 0
            return {
              sent: done + prefix,
              error: new TransportUnavailable({
                transport: "nats",
                message: `nats: stream ${o.streamName} was replaced; the relay resends from the outbox`,
              }),
            }
          }
        }
        if (foreign !== undefined) {
          yield* Effect.logWarning(
            `nats: ${foreign}, not ${o.streamName}; subscriptions read ${o.streamName}`,
          )
        }
        prefix = 0
        while (prefix < prepared.length && isStored(results[prefix])) prefix++
        done += prefix
        if (prefix === prepared.length) {
          return invalid === undefined ? { sent: done } : { sent: done, error: invalid }
        }
        const failed = results[prefix]
        const busError =
          failed instanceof Error
            ? toBusError(failed, `publish ${prepared[prefix]!.id} to ${prepared[prefix]!.subject}`)
            : new TransportUnavailable({
                transport: "nats",
                message: `nats: reconnected while publishing ${prepared[prefix]!.id}`,
              })
        // No responder for the subject may be a lost stream: have it checked (and re-created).
        if (maybeStreamGone(busError)) {
          yield* watch.check(`send: ${busError.message}`)
          if (watch.current().generation !== generation) {
            return {
              sent: done,
              error: new TransportUnavailable({
                transport: "nats",
                message: `nats: stream ${o.streamName} was lost; the relay resends from the outbox`,
              }),
            }
          }
        }
        return yield* Effect.fail(busError)
      })
      return yield* retryWhileRetryable(attempt, "nats: publish run", retry).pipe(
        Effect.catch((error: BusError) => Effect.succeed({ sent: done, error })),
      )
    })
  return { send, sendAll }
}

/**
 * The NATS JetStream transport. Events reach it through the relay (`needsRelay`), which
 * publishes each committed outbox row with `Nats-Msg-Id` = event id, so a row sent twice
 * is stored once within the stream's duplicate window.
 *
 * Applications pass it to `createBus` as `transport: { broker: nats({ servers }) }`. When
 * an outbox is in context (as in `createBus`), `head` and `"now"` are measured against the
 * outbox, so a subscription leaves out events committed before it that the relay sends
 * later. Consumer groups dead-letter to `<prefix>.dlq.<tenant>.<channel>` (stream
 * `<name>_DLQ`), which `deadLetters` reads back.
 *
 * The connection it opens is drained and closed when the layer is released; a
 * `connection` you pass is left open.
 */
export const natsTransport = (options: NatsTransportOptions = {}): Layer.Layer<Transport, BusError> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const o = resolveOptions(options)
      if (o instanceof ConfigError) return yield* o
      const store = yield* Effect.serviceOption(OutboxReader)
      const nc = options.connection ?? (yield* openConnection(options))
      if (nc.isClosed()) {
        return yield* new TransportUnavailable({
          transport: "nats",
          message: "nats: the connection is closed",
        })
      }
      const jsm = yield* Effect.tryPromise({
        try: () => jetstreamManager(nc, { timeout: o.requestTimeoutMs }),
        catch: (e) => toBusError(e, "JetStream is not available on this server (start it with -js)"),
      })
      const js = jsm.jetstream()
      const streams = yield* ensureStreams(jsm, o)
      const serverMaxPayload = nc.info?.max_payload ?? defaultServerMaxPayload
      const maxPayloadBytes = serverMaxPayload - headerReserveBytes
      const conn = yield* watchConnection(nc)
      const watch = yield* watchStream(jsm, o, conn, streams.events)
      // Ordered consumers are cheap to create again: time their requests out sooner, so that
      // after a node loss they come back soon after the election rather than a timeout later.
      const jsOrdered = jetstream(nc, { timeout: Math.min(o.requestTimeoutMs, 2_000) })
      const { head, subscribe, checkStart, openCursor, stats } = yield* makeSubscribe({
        js: jsOrdered,
        jsm,
        o,
        store,
        conn,
        watch,
      })
      const service = Transport.of({
        capabilities: capabilities("nats", {
          needsRelay: true,
          dedupesSends: true,
          consumerGroups: true,
          replay: true,
          maxPayloadBytes,
        }),
        head,
        checkStart,
        subscribe,
        group: makeGroup({ js, jsm, o, maxPayloadBytes: serverMaxPayload - 512, conn, watch }),
        ...makeSend(conn, js, yield* makeAckMux(nc, o.requestTimeoutMs), o, serverMaxPayload, watch),
        deadLetters: (limit) => readDeadLetters(jsm, js, o, limit),
      })
      // The relay reads it to resend the outbox after a lost stream (core relay/resend.ts).
      // The Promise facade pulls subscriptions straight from the feeds' logs (subscribe.ts).
      return attachFeedCursor(attachResendSignal(service, watch.resend), openCursor, stats)
    }),
  )
