import type { BusError } from "@bus/core"
import { type Address, checkAddress, Metrics } from "@bus/core/adapter"
import { Effect, Metric, PubSub, Queue, type Scope, Stream } from "effect"
import type pg from "pg"
import { parsePgSnapshot, type Snapshot } from "../cursor.js"
import { addressChannel, decodePayload, relayChannel } from "../names.js"
import { notifyParam } from "../outbox/append.js"
import type { OutboxQueries } from "../outbox/queries.js"
import { queryTimeoutCode } from "../sql/bounded.js"
import { runQuery, type SqlExecutor } from "../sql/executor.js"
import type { NotifyHealth } from "./health.js"
import { type Listener, makeListener } from "./listener.js"

/**
 * Wake-ups of one store: which addresses are watched, what the LISTEN connection hears
 * about them, and the fallback poll. Everything ends up as an address on `changes` (or
 * a tick on `relayWakeups`), meaning "read from your cursor again".
 *
 * @module
 */

/** Configuration of {@link makeWakeUps}. */
export interface WakeUpsConfig {
  readonly schema: string
  readonly executor: SqlExecutor
  readonly queries: OutboxQueries
  /** Connection settings of the LISTEN client; `undefined` runs without LISTEN (poll only). */
  readonly listener:
    | {
        readonly client: pg.ClientConfig
        readonly probeTimeoutMs: number
        readonly reprobeIntervalMs: number
        readonly initialDelayMs: number
        readonly maxDelayMs: number
        readonly heartbeatIntervalMs: number
        readonly heartbeatTimeoutMs: number
        readonly closeGraceMs: number
      }
    | undefined
  readonly pollIntervalMs: number
  readonly degradedPollIntervalMs: number
  /**
   * Runs the fallback poll with its own deadline (a statement that misses it is abandoned
   * and its connection destroyed), so one hung poll never holds up the next.
   */
  readonly pollExecutor: SqlExecutor
}

/** The wake-up side of a store. */
export interface WakeUps {
  readonly changes: Stream.Stream<Address>
  readonly relayWakeups: Stream.Stream<void>
  readonly watch: (address: Address) => Effect.Effect<void, BusError, Scope.Scope>
  readonly watchRelay: Effect.Effect<void, never, Scope.Scope>
  /** NOTIFY through the store's pool, outside any transaction. */
  readonly sendNotify: (channels: Array<string>, payloads: Array<string>) => Effect.Effect<void, BusError>
  readonly health: () => NotifyHealth
  /** NOTIFY channels of the addresses watched now. */
  readonly watchedChannels: () => ReadonlyArray<string>
}

const keyOf = (a: Address): string => `${a.tenant}\u0000${a.channel}`

/** Starts the listener (if configured) and the fallback poll in the current scope. */
export const makeWakeUps = (config: WakeUpsConfig): Effect.Effect<WakeUps, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { executor, queries } = config
    const relayCh = relayChannel(config.schema)
    const changesHub = yield* Effect.acquireRelease(PubSub.unbounded<Address>(), PubSub.shutdown)
    const relayHub = yield* Effect.acquireRelease(PubSub.unbounded<void>(), PubSub.shutdown)
    // channel → watched addresses on it (several only on a hash collision) with watch counts.
    const watched = new Map<string, Map<string, { readonly address: Address; refs: number }>>()
    let relayWatchers = 0
    let malformed = 0
    let polls = 0
    // Consecutive failed polls (a timeout included) and the last failure: health reports
    // them until a poll passes again.
    let pollFailures = 0
    let pollTimeouts = 0
    let lastPollError: string | undefined
    // The fallback poll looks for rows not visible in the snapshot of the previous check.
    let pollSnapshot: Snapshot | undefined

    const wakeAll = () => {
      for (const targets of watched.values()) {
        for (const t of targets.values()) PubSub.publishUnsafe(changesHub, t.address)
      }
      if (relayWatchers > 0) PubSub.publishUnsafe(relayHub, undefined)
    }

    // Payloads are untrusted: one that names a watched address of this channel wakes that
    // address; anything else wakes every address on the channel (never fewer than needed).
    const onNotification = (channel: string, payload: string | undefined) => {
      if (channel === relayCh) {
        if (relayWatchers > 0) PubSub.publishUnsafe(relayHub, undefined)
        return
      }
      const targets = watched.get(channel)
      if (!targets) return
      const named = decodePayload(payload)
      const hit = named === undefined ? undefined : targets.get(keyOf(named))
      if (hit) {
        PubSub.publishUnsafe(changesHub, hit.address)
        return
      }
      if (named === undefined) malformed++
      for (const t of targets.values()) PubSub.publishUnsafe(changesHub, t.address)
    }

    const sendNotify = (channels: Array<string>, payloads: Array<string>) =>
      runQuery(executor, "notify", queries.notify, [notifyParam(channels, payloads)]).pipe(Effect.asVoid)

    // Nudges the poll loop when the NOTIFY state changes, so a degraded listener gets the
    // short interval at once, and a disabled poll needs no timer at all.
    const healthChanged = yield* Queue.sliding<void>(1)
    let listener: Listener | undefined
    if (config.listener) {
      listener = yield* makeListener({
        ...config.listener,
        sendNotify: (channel, payload) => sendNotify([channel], [payload]),
        onNotification,
        onReady: (query) =>
          Effect.gen(function* () {
            // Everything committed before this point is covered by the wake-ups below
            // (readers re-read from their cursors); the poll only needs to look later.
            const rows = yield* Effect.tryPromise(() =>
              query("SELECT pg_current_snapshot()::text AS s"),
            ).pipe(Effect.option)
            if (rows._tag === "Some" && rows.value.rows[0]) {
              pollSnapshot = parsePgSnapshot(String(rows.value.rows[0].s))
            }
            wakeAll()
          }),
        onHealthChange: () => {
          Queue.offerUnsafe(healthChanged, undefined)
        },
      })
    }

    const pollInterval = (): number => {
      if (!listener || listener.state.notify === "degraded") {
        return config.degradedPollIntervalMs || config.pollIntervalMs
      }
      return config.pollIntervalMs
    }

    // One statement per tick for the whole process, and none at all while nothing is watched.
    const pollOnce = Effect.gen(function* () {
      const addresses = [...watched.values()].flatMap((targets) =>
        [...targets.values()].map((t) => t.address),
      )
      if (addresses.length === 0 && relayWatchers === 0) return
      const since = pollSnapshot
      const rows = yield* runQuery(config.pollExecutor, "fallback poll", queries.changedAddresses, [
        since ? addresses.map((a) => a.tenant) : [],
        since ? addresses.map((a) => a.channel) : [],
        since ? String(since.xmax) : "0",
        since ? since.xip.map(String) : [],
      ])
      polls++
      const first = rows[0]
      if (first) pollSnapshot = parsePgSnapshot(String(first.snapshot))
      let hits = 0
      for (const row of rows) {
        if (row.tenant === null || row.tenant === undefined) continue
        hits++
        PubSub.publishUnsafe(changesHub, { tenant: String(row.tenant), channel: String(row.channel) })
      }
      if (hits > 0) {
        yield* Metric.update(
          Metric.withAttributes(Metrics.fallbackPollHits, { transport: "postgres-notify" }),
          hits,
        )
      }
      // Relays have no address: a tick is their wake-up (they lease and find out).
      if (relayWatchers > 0) PubSub.publishUnsafe(relayHub, undefined)
    })

    yield* Effect.gen(function* () {
      for (;;) {
        const interval = pollInterval()
        if (interval === 0) {
          yield* Queue.take(healthChanged)
          continue
        }
        yield* Queue.take(healthChanged).pipe(Effect.timeoutOption(interval))
        yield* pollOnce.pipe(
          Effect.tap(() =>
            Effect.sync(() => {
              pollFailures = 0
              lastPollError = undefined
            }),
          ),
          Effect.catch((e: BusError) =>
            Effect.gen(function* () {
              pollFailures++
              if ((e.cause as { code?: unknown } | undefined)?.code === queryTimeoutCode) pollTimeouts++
              lastPollError = e.message
              // Once per run of failures, not once per tick.
              if (pollFailures === 1) {
                yield* Effect.logWarning(`@bus/postgres-notify: fallback poll failed: ${e.message}`)
              }
            }),
          ),
        )
      }
    }).pipe(Effect.forkScoped)

    const watch = (address: Address): Effect.Effect<void, BusError, Scope.Scope> =>
      Effect.gen(function* () {
        const a = yield* checkAddress(address)
        const channel = addressChannel(config.schema, a)
        const key = keyOf(a)
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            let targets = watched.get(channel)
            if (!targets) {
              targets = new Map()
              watched.set(channel, targets)
            }
            const t = targets.get(key)
            if (t) t.refs++
            else targets.set(key, { address: a, refs: 1 })
          }),
          () =>
            Effect.sync(() => {
              const targets = watched.get(channel)
              const t = targets?.get(key)
              if (!targets || !t) return
              if (--t.refs > 0) return
              targets.delete(key)
              if (targets.size === 0) watched.delete(channel)
            }),
        )
        if (listener) yield* listener.listen(channel)
      })

    const watchRelay: Effect.Effect<void, never, Scope.Scope> = Effect.gen(function* () {
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          relayWatchers++
        }),
        () =>
          Effect.sync(() => {
            relayWatchers--
          }),
      )
      if (listener) yield* listener.listen(relayCh)
    })

    const health = (): NotifyHealth => {
      const s = listener?.state
      // Failing polls degrade whatever the listener says: a working LISTEN connection over
      // a pool whose connections all hang still delivers nothing (reads hang the same way).
      const pollsFailing = pollFailures > 0
      const pollReason = `fallback polls are failing (${pollFailures} in a row: ${lastPollError}); readers retry from their cursors`
      return {
        notify: pollsFailing ? "degraded" : s ? s.notify : "disabled",
        reason: pollsFailing
          ? s?.notify === "degraded"
            ? `${s.reason}; ${pollReason}`
            : pollReason
          : s
            ? s.reason
            : "listen: false; wake-ups come from the poll only",
        connected: s?.connected ?? false,
        connects: s?.connects ?? 0,
        disconnects: s?.disconnects ?? 0,
        failedAttempts: s?.failedAttempts ?? 0,
        notifications: s?.notifications ?? 0,
        malformedNotifications: malformed,
        channels: listener?.channelCount() ?? 0,
        lastError: s?.lastError,
        polls,
        pollIntervalMs: pollInterval(),
        pollFailures,
        pollTimeouts,
        heartbeats: s?.heartbeats ?? 0,
        heartbeatFailures: s?.heartbeatFailures ?? 0,
        lastHeartbeatMs: s?.lastHeartbeatMs,
      }
    }

    return {
      changes: Stream.fromPubSub(changesHub),
      relayWakeups: Stream.fromPubSub(relayHub),
      watch,
      watchRelay,
      sendNotify,
      health,
      watchedChannels: () => [...watched.keys()],
    }
  })
