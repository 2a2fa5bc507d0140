import { randomBytes } from "node:crypto"
import type { BusError } from "@bus/core"
import { backoffDelay, Metrics } from "@bus/core/adapter"
import { Deferred, Effect, Exit, Metric, type Scope } from "effect"
import pg from "pg"
import { isConnectionError } from "../errors.js"
import { probeChannel } from "../names.js"
import { destroySocket } from "../sql/bounded.js"

/**
 * The LISTEN connection: one dedicated `pg.Client` per store (never a pool slot, since
 * a pooled connection would drop its LISTENs when returned), reconnected for ever with
 * capped exponential backoff and jitter. Channels are LISTENed while someone watches
 * them and UNLISTENed after, so idle addresses cost nothing. After every (re)connect,
 * once every channel is LISTENed again, `onReady` runs: the store wakes every watched
 * address so readers re-read from their cursors (the catch-up for whatever committed
 * while the connection was down).
 *
 * TCP does not notice a peer that went silent without closing (a NAT or load balancer
 * that dropped the flow, a failover behind a proxy): the socket stays open, a LISTEN sent
 * on it never completes and no notification ever arrives. So a heartbeat runs on the
 * connection for its whole life: every `heartbeatIntervalMs` it NOTIFYs itself on a
 * private channel, through this very connection, and waits for the notification; one
 * that has not come back within `heartbeatTimeoutMs` (statement reply and notification
 * both) declares the connection dead. Its socket is destroyed (which also fails every
 * statement queued on it, so nobody waits on a dead connection) and the usual reconnect
 * takes over. A connection that goes silent is thus replaced within
 * `heartbeatIntervalMs + heartbeatTimeoutMs` (default 10 s), plus the reconnect delay.
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
  /**
   * Runs after every (re)connect, once all channels are LISTENed again; `query` runs a
   * statement on the LISTEN connection, in turn with the listener's own.
   */
  readonly onReady: (query: (sql: string) => Promise<pg.QueryResult>) => Effect.Effect<void>
  /** Called when the probe result changes the delivery state. */
  readonly onHealthChange: () => void
  /** Time between two heartbeats on the LISTEN connection (a self-NOTIFY round trip). */
  readonly heartbeatIntervalMs: number
  /** A heartbeat not back within this declares the connection dead (it is destroyed and replaced). */
  readonly heartbeatTimeoutMs: number
  /** How long closing waits for a polite end before destroying the socket. */
  readonly closeGraceMs: number
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
  /** Heartbeats that came back, and connections declared dead for a missed one. */
  heartbeats: number
  heartbeatFailures: number
  /** Round trip of the last heartbeat (ms). */
  lastHeartbeatMs: number | undefined
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

// Closing must never hang (a paused server or a silent proxy keeps the socket open): end
// politely, then destroy the socket. The timer is cleared either way so no handle outlives
// the close. A connection already known dead is destroyed at once (grace 0).
const closeClient = (client: pg.Client, graceMs: number): Promise<void> =>
  new Promise<void>((resolve) => {
    if (graceMs <= 0) {
      destroySocket(client)
      client.end().catch(() => {})
      resolve()
      return
    }
    const timer = setTimeout(() => {
      destroySocket(client)
      resolve()
    }, graceMs)
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
      heartbeats: 0,
      heartbeatFailures: 0,
      lastHeartbeatMs: undefined,
    }

    // The connection is down or being replaced: delivery rests on the fallback poll until a
    // new connection passes its probe. Not the pgbouncer warning of `degrade`: the path
    // works, this connection does not.
    const connectionDown = (reason: string) => {
      const changed = state.notify !== "degraded" || state.reason !== reason
      state.notify = "degraded"
      state.reason = reason
      if (changed) config.onHealthChange()
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
    const issueQuery = (client: pg.Client, sql: string): Promise<pg.QueryResult> => {
      const next = (tails.get(client) ?? Promise.resolve()).then(() => client.query(sql))
      tails.set(
        client,
        next.catch(() => undefined),
      )
      return next
    }
    /** {@link issueQuery} resolving with the statement's error instead of failing (undefined when it passed). */
    const issue = (client: pg.Client, sql: string): Promise<unknown> =>
      issueQuery(client, sql).then(
        () => undefined,
        (error: unknown) => error,
      )

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

    // One self-NOTIFY round trip on the connection itself: the statement's reply and the
    // notification both have to come back. Fails (with the reason) after the timeout.
    const heartbeat = (client: pg.Client, channel: string) =>
      Effect.gen(function* () {
        const nonce = randomBytes(8).toString("hex")
        const done = Deferred.makeUnsafe<void>()
        probes.set(channel, { nonce, done })
        const started = Date.now()
        // The nonce is hex and the channel [a-z0-9_]: nothing to escape.
        void issue(client, `NOTIFY ${quote(channel)}, '${nonce}'`)
        const arrived = yield* Deferred.await(done).pipe(Effect.timeoutOption(config.heartbeatTimeoutMs))
        if (arrived._tag === "None") {
          state.heartbeatFailures++
          return yield* Effect.fail(`no heartbeat reply within ${config.heartbeatTimeoutMs} ms`)
        }
        state.heartbeats++
        state.lastHeartbeatMs = Date.now() - started
      })

    // For the connection's whole life, from right after connect: a hang in LISTEN-all or in
    // onReady is caught as surely as one later on.
    const heartbeats = (client: pg.Client, lost: Deferred.Deferred<string>) =>
      Effect.gen(function* () {
        const channel = probeChannel()
        yield* Effect.addFinalizer(() => Effect.sync(() => probes.delete(channel)))
        probes.set(channel, { nonce: "", done: Deferred.makeUnsafe<void>() })
        // Not awaited: a LISTEN that never completes is exactly what the first heartbeat
        // (queued behind it) detects.
        void issue(client, `LISTEN ${quote(channel)}`)
        yield* heartbeat(client, channel)
        for (;;) {
          yield* Effect.sleep(config.heartbeatIntervalMs)
          yield* heartbeat(client, channel)
        }
      }).pipe(
        Effect.scoped,
        Effect.catch((reason: string) =>
          Effect.sync(() => Deferred.doneUnsafe(lost, Exit.succeed(`heartbeat failed: ${reason}`))),
        ),
      )

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
        // Until connected, and once ended, the socket is closed without a grace period.
        let dead = true
        const client = yield* Effect.acquireRelease(
          Effect.sync(() => newClient(lost)),
          (c) =>
            Effect.promise(() => {
              if (current === c) current = undefined
              state.connected = false
              return closeClient(c, dead ? 0 : config.closeGraceMs)
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
        dead = false
        yield* Effect.forkScoped(heartbeats(client, lost))
        // LISTEN-all, the hand-over and the probe run beside the wait for the end, so a
        // statement that never completes (a silent peer) cannot hold the session: the
        // heartbeat ends it, and closing the socket fails that statement.
        yield* Effect.forkScoped(
          Effect.gen(function* () {
            const channels = [...refs.keys()]
            if (channels.length > 0) {
              const error = yield* Effect.promise(() =>
                issue(client, channels.map((c) => `LISTEN ${quote(c)}`).join("; ")),
              )
              if (error !== undefined && isConnectionError(error)) {
                Deferred.doneUnsafe(lost, Exit.succeed(messageOf(error)))
                return
              }
              if (error !== undefined) yield* listenFailed(error)
            }
            yield* config.onReady((sql) => issueQuery(client, sql))
            yield* probe(client)
            for (;;) {
              yield* Effect.sleep(config.reprobeIntervalMs)
              if (state.notify === "degraded") yield* probe(client)
            }
          }),
        )
        const reason = yield* Deferred.await(lost)
        // Whatever ended the session (lost socket, missed heartbeat, a statement failing
        // with a connection error), the socket is not trusted any more: it is destroyed at
        // once, which also fails every statement still queued on it.
        dead = true
        return reason
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
        connectionDown(
          `LISTEN connection ${connectedAt === undefined ? "attempt failed" : "lost"} (${reason}); reconnecting`,
        )
        yield* Effect.logWarning(
          `@bus/postgres-notify: LISTEN connection ${connectedAt === undefined ? "failed" : "lost"} (${reason}); reconnecting in ${delay} ms`,
        )
        yield* Effect.sleep(delay)
      }
    })

    yield* Effect.forkScoped(loop)
    return { listen, channelCount: () => refs.size, state }
  })
