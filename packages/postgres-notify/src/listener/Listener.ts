import { randomBytes } from "node:crypto"
import { type BusError, backoffDelay, Metrics } from "@bus/core"
import { Deferred, Effect, Exit, Metric, type Scope } from "effect"
import pg from "pg"
import { isConnectionError } from "../errors.js"
import { probeChannel } from "../outbox/channels.js"

/**
 * The LISTEN connection: one dedicated `pg.Client` per store (never a pool slot, since
 * a pooled connection would drop its LISTENs when returned), reconnected for ever with
 * capped exponential backoff and jitter. Channels are LISTENed while someone watches
 * them and UNLISTENed after, so idle addresses cost nothing. After every (re)connect,
 * once every channel is LISTENed again, `onReady` runs: the store wakes every watched
 * address so readers re-read from their cursors (the catch-up for whatever committed
 * while the connection was down).
 *
 * @module
 */

/** Configuration of {@link makeListener}. */
export interface ListenerConfig {
  /** Connection settings of the dedicated client (application_name included). */
  readonly client: pg.ClientConfig
  /** How long the self-probe waits for its own NOTIFY. */
  readonly probeTimeoutMs: number
  /** While degraded, probe again this often (a pgbouncer or failover fixed meanwhile heals without a reconnect). */
  readonly reprobeIntervalMs: number
  /** First reconnect delay; doubles per failed attempt up to `maxDelayMs`, with jitter. */
  readonly initialDelayMs: number
  readonly maxDelayMs: number
  /** Sends a NOTIFY through another connection (the store's pool), as producers would. */
  readonly sendNotify: (channel: string, payload: string) => Effect.Effect<void, BusError>
  /** Every notification on a channel other than the probe's. Must not throw. */
  readonly onNotification: (channel: string, payload: string | undefined) => void
  /** Runs after every (re)connect, once all channels are LISTENed again. */
  readonly onReady: (client: pg.Client) => Effect.Effect<void>
  /** Called when the probe result changes the delivery state. */
  readonly onHealthChange: () => void
}

/** Mutable listener state; the store copies it into its health report. */
export interface ListenerState {
  notify: "starting" | "healthy" | "degraded"
  reason: string | undefined
  connected: boolean
  connects: number
  disconnects: number
  failedAttempts: number
  notifications: number
  lastError: string | undefined
}

/** Handle of a running listener. */
export interface Listener {
  /** LISTENs on `channel` for the life of the scope (reference-counted); resolves once the server confirmed it, or at once while disconnected. */
  readonly listen: (channel: string) => Effect.Effect<void, never, Scope.Scope>
  /** Channels currently wanted. */
  readonly channelCount: () => number
  readonly state: ListenerState
}

// The names come from channels.ts ([a-z0-9_] only), so quoting is belt and braces.
const quote = (channel: string): string => `"${channel.replaceAll('"', '""')}"`

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** A delay in [d/2, d]: "equal jitter", so a fleet that lost one server spreads out. */
const jittered = (ms: number): number => Math.round(ms / 2 + Math.random() * (ms / 2))

// Closing must never hang (a paused server keeps the socket open): end politely, then
// destroy the socket. The timer is cleared either way so no handle outlives the close.
const closeClient = (client: pg.Client): Promise<void> =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      ;(
        client as unknown as { connection?: { stream?: { destroy?: () => void } } }
      ).connection?.stream?.destroy?.()
      resolve()
    }, 2_000)
    client.end().then(
      () => {
        clearTimeout(timer)
        resolve()
      },
      () => {
        clearTimeout(timer)
        resolve()
      },
    )
  })

/** Starts the listener in the current scope; closing the scope closes its connection. */
export const makeListener = (config: ListenerConfig): Effect.Effect<Listener, never, Scope.Scope> =>
  Effect.gen(function* () {
    const refs = new Map<string, number>()
    const probes = new Map<string, { readonly nonce: string; readonly done: Deferred.Deferred<void> }>()
    let current: pg.Client | undefined
    const state: ListenerState = {
      notify: "starting",
      reason: undefined,
      connected: false,
      connects: 0,
      disconnects: 0,
      failedAttempts: 0,
      notifications: 0,
      lastError: undefined,
    }

    const degrade = (reason: string) =>
      Effect.gen(function* () {
        const changed = state.notify !== "degraded" || state.reason !== reason
        state.notify = "degraded"
        state.reason = reason
        if (changed) {
          yield* Effect.logWarning(
            `@bus/postgres-notify: LISTEN/NOTIFY is not working (${reason}). ` +
              "Falling back to polling the outbox. The LISTEN connection needs a direct or session-mode " +
              "connection to the primary: not pgbouncer in transaction mode, not a replica.",
          )
          config.onHealthChange()
        }
      })

    // A failed LISTEN on a live connection is a refusal (e.g. a replica: "cannot execute
    // LISTEN during recovery"); a failed one on a dying connection is handled by the reconnect.
    const listenFailed = (error: unknown): Effect.Effect<void> =>
      isConnectionError(error) ? Effect.void : degrade(`LISTEN failed: ${messageOf(error)}`)

    // Statements on the one LISTEN connection run strictly one after another, chained here
    // rather than left to pg's internal queue (deprecated, and gone in pg 9): a later
    // UNLISTEN can never overtake its LISTEN, and no query is issued while one is in flight.
    const tails = new WeakMap<pg.Client, Promise<unknown>>()
    const issue = (client: pg.Client, sql: string): Promise<unknown> => {
      const next = (tails.get(client) ?? Promise.resolve()).then(() =>
        client.query(sql).then(
          () => undefined,
          (error: unknown) => error,
        ),
      )
      tails.set(client, next)
      return next
    }

    const listen = (channel: string): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function* () {
        const pending = yield* Effect.acquireRelease(
          Effect.sync(() => {
            const n = refs.get(channel) ?? 0
            refs.set(channel, n + 1)
            // Queued on the client in program order, so a later UNLISTEN of the same
            // channel can never overtake this LISTEN.
            return n === 0 && current ? issue(current, `LISTEN ${quote(channel)}`) : undefined
          }),
          () =>
            Effect.sync(() => {
              const n = (refs.get(channel) ?? 1) - 1
              if (n > 0) {
                refs.set(channel, n)
                return
              }
              refs.delete(channel)
              if (current) void issue(current, `UNLISTEN ${quote(channel)}`)
            }),
        )
        if (pending) {
          const error = yield* Effect.promise(() => pending)
          if (error !== undefined) yield* listenFailed(error)
        }
      })

    const onNotification = (msg: pg.Notification) => {
      const probe = probes.get(msg.channel)
      if (probe) {
        if (msg.payload === probe.nonce) Deferred.doneUnsafe(probe.done, Exit.void)
        return
      }
      state.notifications++
      config.onNotification(msg.channel, msg.payload)
    }

    // LISTEN, NOTIFY from the pool (as a producer would), wait. Passing means the whole
    // path works: session connection, same primary, notifications forwarded.
    const probe = (client: pg.Client) =>
      Effect.gen(function* () {
        const channel = probeChannel()
        const nonce = randomBytes(8).toString("hex")
        const done = Deferred.makeUnsafe<void>()
        probes.set(channel, { nonce, done })
        yield* Effect.addFinalizer(() => Effect.sync(() => probes.delete(channel)))
        const listened = yield* Effect.promise(() => issue(client, `LISTEN ${quote(channel)}`))
        if (listened !== undefined) return yield* listenFailed(listened)
        const sent = yield* Effect.exit(config.sendNotify(channel, nonce))
        if (Exit.isFailure(sent)) {
          state.lastError = "self-probe NOTIFY failed"
          return yield* degrade("the self-probe could not send its NOTIFY")
        }
        const arrived = yield* Deferred.await(done).pipe(Effect.timeoutOption(config.probeTimeoutMs))
        void issue(client, `UNLISTEN ${quote(channel)}`)
        if (arrived._tag === "None") {
          return yield* degrade(`the self-probe NOTIFY did not arrive within ${config.probeTimeoutMs} ms`)
        }
        if (state.notify !== "healthy") {
          state.notify = "healthy"
          state.reason = undefined
          config.onHealthChange()
        }
      }).pipe(Effect.scoped)

    const newClient = (lost: Deferred.Deferred<string>): pg.Client => {
      const client = new pg.Client(config.client)
      // Without an 'error' listener a dropped socket would crash the process.
      client.on("error", (e) => Deferred.doneUnsafe(lost, Exit.succeed(messageOf(e))))
      client.on("end", () => Deferred.doneUnsafe(lost, Exit.succeed("connection ended")))
      client.on("notification", onNotification)
      return client
    }

    // One connection's life: connect, LISTEN everything, hand over, probe, wait for the end.
    const session = (onConnected: () => void) =>
      Effect.gen(function* () {
        const lost = Deferred.makeUnsafe<string>()
        const client = yield* Effect.acquireRelease(
          Effect.sync(() => newClient(lost)),
          (c) =>
            Effect.promise(() => {
              if (current === c) current = undefined
              state.connected = false
              return closeClient(c)
            }),
        )
        // Interruptible: closing the store while a connection attempt hangs (a paused
        // server) releases the client at once instead of waiting for the connect timeout.
        yield* Effect.tryPromise({ try: () => client.connect(), catch: messageOf })
        // Set before LISTEN-all: a watch that starts now LISTENs itself (LISTEN is idempotent).
        current = client
        state.connected = true
        state.connects++
        if (state.connects > 1) {
          yield* Metric.update(Metric.withAttributes(Metrics.reconnects, { transport: "postgres-notify" }), 1)
        }
        onConnected()
        const channels = [...refs.keys()]
        if (channels.length > 0) {
          const error = yield* Effect.promise(() =>
            issue(client, channels.map((c) => `LISTEN ${quote(c)}`).join("; ")),
          )
          if (error !== undefined && isConnectionError(error)) return messageOf(error)
          if (error !== undefined) yield* listenFailed(error)
        }
        yield* config.onReady(client)
        yield* Effect.forkScoped(
          probe(client).pipe(
            Effect.andThen(
              Effect.sleep(config.reprobeIntervalMs).pipe(
                Effect.andThen(
                  Effect.suspend(() => (state.notify === "degraded" ? probe(client) : Effect.void)),
                ),
                Effect.forever,
              ),
            ),
          ),
        )
        return yield* Deferred.await(lost)
      }).pipe(Effect.scoped)

    const loop = Effect.gen(function* () {
      let attempt = 0
      for (;;) {
        let connectedAt: number | undefined
        const reason = yield* session(() => {
          connectedAt = Date.now()
        }).pipe(Effect.catch((message: string) => Effect.succeed(message)))
        state.lastError = reason
        if (connectedAt !== undefined) {
          state.disconnects++
          // A connection that held for a while resets the backoff; a flapping one does not.
          if (Date.now() - connectedAt >= config.maxDelayMs) attempt = 0
        } else {
          state.failedAttempts++
        }
        attempt++
        const delay = jittered(backoffDelay(attempt, config.initialDelayMs, config.maxDelayMs))
        yield* Effect.logWarning(
          `@bus/postgres-notify: LISTEN connection ${connectedAt === undefined ? "failed" : "lost"} (${reason}); reconnecting in ${delay} ms`,
        )
        yield* Effect.sleep(delay)
      }
    })

    yield* Effect.forkScoped(loop)
    return { listen, channelCount: () => refs.size, state }
  })
