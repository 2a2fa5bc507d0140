import type { BusError } from "@bus/core"
import { makeResendSignal, type ResendSignal } from "@bus/core/adapter"
import type { JetStreamManager, StreamInfo } from "@nats-io/jetstream"
import { Deferred, Effect, Exit, type Scope, Semaphore } from "effect"
import type { ConnectionWatch } from "./connection.js"
import { toBusError } from "./errors.js"
import type { ResolvedOptions } from "./options.js"
import { ensureStreams, isNotFound } from "./stream.js"

/**
 * Broker data loss on NATS: the event stream deleted by an operator (`nats stream rm`), or
 * lost with the server's store (a wiped disk, a memory-storage stream after a restart).
 * Nothing in JetStream tells a client: publishes find no responder, ordered consumers wait,
 * and a stream created again starts its sequences at 1 — where an old cursor's sequence
 * would silently skip that many events.
 *
 * So the transport keeps the stream's identity, its `created` timestamp, and checks the
 * stream every `streamCheckMs` (default 5 s), right after a reconnect, and at once when a
 * send or a reader suspects it (no responders, "stream not found"). A missing stream is
 * created again; a stream that exists with another `created` was replaced by someone else.
 * Either way the identity changes (a new `generation`), which:
 *
 * - raises the relay's resend signal (core `relay/resend.ts`): the relay of this process
 *   sends the retained outbox again, and the stream drops, by event id, what it still has;
 * - replaces every subscription feed: subscribers resume on the new stream by the outbox
 *   frontier of the last event they delivered (no gap, no duplicate), or end with
 *   `CursorInvalid` when they have none (see `subscribe.ts`);
 * - makes cursors of the old stream, which carry its identity (`cursor.ts`), resume the same
 *   way, or be refused, instead of pointing at someone else's sequence.
 *
 * Consumer groups need nothing more: their durable consumer is created again on the new
 * stream, which the relay refills, and the consume loop skips what the group handled
 * (its inbox and its window of handled ids).
 *
 * @module
 */

/** The stream as a process knows it. */
export interface StreamIdentity {
  /** 8 hex digits derived from `created`: what cursors carry. */
  readonly id: string
  /** The stream's `created` timestamp. */
  readonly created: string
  /** Grows by one each time the stream was lost or replaced under this process. */
  readonly generation: number
}

export interface StreamWatch {
  readonly current: () => StreamIdentity
  /**
   * Checks the stream now (re-creating it if it is missing). Coalesced: a caller that asks
   * while a check runs shares the next one. Never fails; a server that does not answer is
   * left to the connection's own recovery.
   */
  readonly check: (why: string) => Effect.Effect<void>
  /** Completes once the generation is above `generation`. */
  readonly changedSince: (generation: number) => Effect.Effect<void>
  /** The relay's signal (attached to the transport's service). */
  readonly resend: ResendSignal
}

/** The identity token of a stream created at `created` (FNV-1a, 8 hex digits). */
export const streamIdOf = (created: string): string => {
  let h = 0x811c9dc5
  for (let i = 0; i < created.length; i++) {
    h ^= created.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0).toString(16).padStart(8, "0")
}

const describeState = (info: StreamInfo | undefined): string =>
  info === undefined
    ? "its last state is unknown"
    : info.state.messages === 0
      ? "it held no events"
      : `it held ${info.state.messages} event(s), sequences ${info.state.first_seq}..${info.state.last_seq}`

/**
 * Watches the event stream for the life of the scope. `initial` is what `ensureStreams`
 * found or made at start; a stream it had to create counts as a loss for the relay: it may
 * have been lost while no process ran, and the outbox positions then say more was forwarded
 * than the new stream holds. Resending is what restores it, and costs only repeats
 * otherwise. Only the process that creates it does so (each partition it takes within core's
 * `resendClaimGraceMs`): a fleet whose every process resent on seeing a young stream would
 * resend the outbox once per process a partition passes through while the fleet starts.
 */
export const watchStream = (
  jsm: JetStreamManager,
  o: ResolvedOptions,
  conn: ConnectionWatch,
  initial: { readonly info: StreamInfo; readonly created: boolean },
): Effect.Effect<StreamWatch, never, Scope.Scope> =>
  Effect.gen(function* () {
    const resend = makeResendSignal()
    let identity: StreamIdentity = {
      id: streamIdOf(initial.info.created),
      created: initial.info.created,
      generation: 0,
    }
    let last: StreamInfo | undefined = initial.info
    let changed = Deferred.makeUnsafe<void>()
    if (initial.created) {
      resend.lost(
        `stream ${o.streamName} did not exist at start and was created (a first start, or lost while this bus was not running)`,
      )
    }

    const replace = (info: StreamInfo, what: string) =>
      Effect.gen(function* () {
        const reason = `stream ${o.streamName} ${what} (created ${identity.created}; ${describeState(last)}); now created ${info.created}`
        identity = {
          id: streamIdOf(info.created),
          created: info.created,
          generation: identity.generation + 1,
        }
        last = info
        resend.lost(reason)
        const fired = changed
        changed = Deferred.makeUnsafe<void>()
        Deferred.doneUnsafe(fired, Exit.void)
        yield* Effect.logError(
          `nats: ${reason}. The relay resends the retained outbox; subscriptions resume on the new stream by their outbox position; groups continue on it`,
        )
      })

    const once = Effect.gen(function* () {
      const info = yield* Effect.tryPromise({
        try: () => jsm.streams.info(o.streamName),
        catch: (e) => e,
      }).pipe(
        Effect.map((i): StreamInfo | undefined => i),
        Effect.catch((e) =>
          isNotFound(e)
            ? Effect.succeed(undefined)
            : Effect.fail(toBusError(e, `stream info ${o.streamName}`)),
        ),
      )
      if (info === undefined) {
        const made = yield* ensureStreams(jsm, o)
        // Another process may have created it between our info and add: still a new stream.
        if (made.events.info.created !== identity.created) {
          yield* replace(made.events.info, "was lost (deleted, or the server's store was wiped)")
        }
        return
      }
      if (info.created !== identity.created) {
        return yield* replace(info, "was replaced by another stream of the same name")
      }
      last = info
    })

    const lock = Semaphore.makeUnsafe(1)
    let lastStarted = 0
    const check = (why: string): Effect.Effect<void> =>
      Effect.suspend(() => {
        const asked = Date.now()
        return lock.withPermit(
          Effect.suspend(() => {
            // A check that started after this caller asked answers it too.
            if (lastStarted >= asked) return Effect.void
            lastStarted = Date.now()
            // Not cut short by the caller's interruption (a feed this very check replaces): a
            // re-creation half done would be found again only at the next tick. Bounded by the
            // request timeout.
            return Effect.uninterruptible(once).pipe(
              Effect.catch((e: BusError) =>
                Effect.logDebug(`nats: stream check (${why}) failed: ${e.message}`),
              ),
            )
          }),
        )
      })

    yield* Effect.gen(function* () {
      for (;;) {
        yield* Effect.sleep(o.streamCheckMs)
        yield* check("periodic")
      }
    }).pipe(Effect.forkScoped)
    // A server that restarted with an empty store comes back without the stream: look at once.
    yield* Effect.gen(function* () {
      for (;;) {
        yield* conn.nextReconnect
        yield* check("reconnected")
      }
    }).pipe(Effect.forkScoped)

    return {
      current: () => identity,
      check,
      changedSince: (generation) =>
        Effect.suspend(() => (identity.generation > generation ? Effect.void : Deferred.await(changed))),
      resend,
    }
  })
