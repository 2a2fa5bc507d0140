import { JetStreamApiError, JetStreamError } from "@nats-io/jetstream"
import {
  createInbox,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  NoRespondersError,
  TimeoutError,
} from "@nats-io/transport-node"
import { Effect, type Scope } from "effect"

/**
 * The relay's JetStream publishes without nats.js's per-request machinery.
 *
 * `js.publish` is a request: per message it builds a request object, a deferred, a timer
 * and (on every completion) an `Error` with a stack, and parses the ack through several
 * layers; at relay rates that was most of the relay's CPU per event. A JetStream publish is
 * only a message with a reply subject that the stream answers with a small JSON ack, so the
 * transport publishes with reply subjects under one wildcard inbox subscription, matches
 * acks by a token, keeps a bounded number unanswered, and bounds the wait with one timer per
 * run instead of one per message.
 *
 * @module
 */

/** One message to publish (headers already carry `Nats-Msg-Id`). */
export interface Publish {
  readonly subject: string
  readonly payload: Uint8Array
  readonly id: string
  readonly headers: MsgHdrs
}

/** A stored publish: the stream that stored it, at which sequence, and whether it was a duplicate (by id). */
export interface Stored {
  readonly stream: string
  readonly seq: number
  readonly duplicate: boolean
}

/** A publish's answer: where it was stored, or why it was not. */
export type AckResult = Stored | Error

/** Publishes in flight at most per run: the server and the socket buffer stay bounded. */
export const maxInFlight = 1_024

const decoder = new TextDecoder()

/** The answer a JetStream publish got, as `js.publish` would have judged it. */
const ackOf = (msg: Msg, subject: string): AckResult => {
  // No stream listens on the subject (no responders status, empty body).
  if (msg.data.length === 0) {
    return msg.headers?.code === 503
      ? new NoRespondersError(subject)
      : new JetStreamError(`invalid ack response (status ${msg.headers?.code ?? "none"})`)
  }
  let ack: { stream?: unknown; seq?: unknown; duplicate?: unknown; error?: unknown }
  try {
    ack = JSON.parse(decoder.decode(msg.data))
  } catch {
    return new JetStreamError("invalid ack response (not JSON)")
  }
  if (typeof ack.error === "object" && ack.error !== null) {
    return new JetStreamApiError(ack.error as ConstructorParameters<typeof JetStreamApiError>[0])
  }
  return typeof ack.stream === "string" && ack.stream !== ""
    ? {
        stream: ack.stream,
        seq: typeof ack.seq === "number" ? ack.seq : 0,
        duplicate: ack.duplicate === true,
      }
    : new JetStreamError("invalid ack response")
}

/** Publishes with acks matched on one inbox subscription; see the module comment. */
export interface AckMux {
  /**
   * Publishes `messages` in order, filling `results[i]` as each answer arrives and calling
   * `onAck(i)`. Resolves when every published message has its answer; a message that gets
   * none within `timeoutMs` of the last answer gets a `TimeoutError`. A publish refused at
   * once (closed connection, max_payload) stops the run there with its error. Aborting
   * `signal` stops the run and forgets its outstanding acks.
   */
  readonly publishAll: (
    messages: ReadonlyArray<Publish>,
    results: Array<AckResult | undefined>,
    signal: AbortSignal,
    onAck: (i: number) => void,
  ) => Promise<void>
}

/** The mux of one connection; its subscription ends with the scope. */
export const makeAckMux = (
  nc: NatsConnection,
  timeoutMs: number,
): Effect.Effect<AckMux, never, Scope.Scope> =>
  Effect.gen(function* () {
    // The connection's own inbox prefix (set when permissions allow replies only under it).
    const inbox = createInbox(
      (nc as { readonly options?: { readonly inboxPrefix?: string } }).options?.inboxPrefix,
    )
    const pending = new Map<string, (msg: Msg) => void>()
    let next = 0
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        nc.subscribe(`${inbox}.*`, {
          callback: (error, msg) => {
            if (error !== null) return
            const token = msg.subject.slice(inbox.length + 1)
            const waiter = pending.get(token)
            if (waiter === undefined) return // late ack of a run that timed out or stopped
            pending.delete(token)
            waiter(msg)
          },
        }),
      ),
      (sub) => Effect.sync(() => (nc.isClosed() ? undefined : sub.unsubscribe())),
    )

    const publishAll: AckMux["publishAll"] = (messages, results, signal, onAck) =>
      new Promise<void>((resolve) => {
        const n = messages.length
        const tokens: Array<string | undefined> = new Array(n)
        let sent = 0
        let answered = 0
        let inFlight = 0
        let stopped = false
        let finished = false
        let timer: ReturnType<typeof setTimeout> | undefined
        let lastProgress = Date.now()
        const finish = () => {
          if (finished) return
          finished = true
          clearTimeout(timer)
          signal.removeEventListener("abort", abort)
          for (const token of tokens) if (token !== undefined) pending.delete(token)
          resolve()
        }
        const abort = () => finish()
        // One timer per run, not per message: it fires `timeoutMs` after the last answer
        // (checked when it fires, so answers cost no timer work), and every wait is bounded.
        const arm = (ms: number) => {
          timer = setTimeout(() => {
            const quiet = Date.now() - lastProgress
            if (quiet < timeoutMs) return arm(timeoutMs - quiet)
            for (let i = 0; i < sent; i++) if (results[i] === undefined) results[i] = new TimeoutError()
            finish()
          }, ms)
        }
        const pump = () => {
          while (!stopped && sent < n && inFlight < maxInFlight) {
            const i = sent
            const m = messages[i]!
            const token = (next++).toString(36)
            try {
              nc.publish(m.subject, m.payload, { reply: `${inbox}.${token}`, headers: m.headers })
            } catch (e) {
              // Refused before it left (closed connection, payload too large): the run ends here.
              results[i] = e instanceof Error ? e : new Error(String(e))
              stopped = true
              break
            }
            tokens[i] = token
            pending.set(token, (msg) => {
              tokens[i] = undefined
              results[i] = ackOf(msg, m.subject)
              inFlight--
              answered++
              lastProgress = Date.now()
              onAck(i)
              pump()
            })
            sent++
            inFlight++
          }
          if (answered === sent && (stopped || sent === n)) finish()
        }
        if (signal.aborted) return finish()
        signal.addEventListener("abort", abort)
        arm(timeoutMs)
        pump()
      })

    return { publishAll } satisfies AckMux
  })
