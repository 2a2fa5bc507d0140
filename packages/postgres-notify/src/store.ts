import { type BusError, ConfigError, CursorInvalid } from "@bus/core"
import {
  type Address,
  type CompleteOutbox,
  checkAddress,
  type Envelope,
  type OutboxServices,
  outboxContext,
  partsOf,
} from "@bus/core/adapter"
import { Cause, Context, Effect, Exit, Fiber, Layer, PubSub, Scope, Stream } from "effect"
import pg from "pg"
import { coversPosition, decodeCursor, decodePosition } from "./cursor.js"
import { transportName } from "./errors.js"
import { claimGroup } from "./group.js"
import type { NotifyHealth } from "./listener/health.js"
import { makeWakeUps } from "./listener/wakeUps.js"
import { relayChannel, relayPayload } from "./names.js"
import { type PostgresOutboxOptions, resolveOptions } from "./options.js"
import { makeAppend, type NotifyMode, wakeUpsFor } from "./outbox/append.js"
import {
  type DeferredTransactions,
  deferAddresses,
  makeNotifyBatcher,
  runTransaction,
  type TransactionOptions,
} from "./outbox/batched.js"
import { relayPartitionOf } from "./outbox/hashtext.js"
import { makeMembership } from "./outbox/members.js"
import { makeQueries } from "./outbox/queries.js"
import { compactEpoch, head, read } from "./outbox/read.js"
import { relayOps } from "./outbox/relay.js"
import { makeRelayLog } from "./outbox/relayLog.js"
import { makeRelayQueries } from "./outbox/relayQueries.js"
import { makeRetentionJob, type RetentionStatus } from "./outbox/retention.js"
import { makePressureMonitor, type PressureSnapshot } from "./pressure/monitor.js"
import { schemaName } from "./schema/identifier.js"
import { migrateEffect } from "./schema/migrate.js"
import { latestVersion } from "./schema/migrations.js"
import { drizzleAdapter } from "./sql/adapters/drizzle.js"
import { effectSqlAdapter } from "./sql/adapters/effectSql.js"
import { kyselyAdapter } from "./sql/adapters/kysely.js"
import { pgAdapter } from "./sql/adapters/pg.js"
import { postgresJsAdapter } from "./sql/adapters/postgresjs.js"
import { prismaAdapter } from "./sql/adapters/prisma.js"
import { boundedQuery, endPoolWithin } from "./sql/bounded.js"
import { runQuery, type SqlExecutor } from "./sql/executor.js"

/**
 * The Postgres implementation of the core outbox contract (every service of it): transactional append,
 * snapshot-safe reads, wake-ups from one LISTEN connection with a fallback poll, the
 * relay's partitioned log, consumer-group positions, dead letters and retention.
 *
 * @module
 */

/**
 * The address `changes` emits when relays should look for rows to forward (a relay
 * wake-up; see the `watchRelay` option). No subscription can have it: both names are empty.
 */
export const relayWakeupAddress: Address = Object.freeze({ tenant: "", channel: "" })

/** The built-in transaction adapters, in the order they are tried (after `options.adapters`). */
export const builtinAdapters = [
  effectSqlAdapter,
  drizzleAdapter,
  kyselyAdapter,
  prismaAdapter,
  pgAdapter,
  postgresJsAdapter,
] as const

/** The Postgres outbox: every service of the core outbox contract plus what only Postgres has. */
export interface PostgresOutboxService extends CompleteOutbox {
  /** Schema of the outbox tables. */
  readonly schema: string
  /** The outbox epoch at start (cursors carry it; see `rotateEpoch`). */
  readonly epoch: string
  /** The pool the store reads with (the caller's when one was passed). */
  readonly pool: pg.Pool
  /** LISTEN/NOTIFY state, counters and the poll interval in force. */
  readonly health: Effect.Effect<NotifyHealth>
  /** Same as {@link PostgresOutboxService.health}, synchronously. */
  readonly healthNow: () => NotifyHealth
  /** NOTIFY channels of the addresses this store watches now (for diagnostics and tests). */
  readonly watchedChannels: () => ReadonlyArray<string>
  /**
   * Sends wake-ups for `addresses` outside any transaction: for producers that let the
   * SDK own the commit (after-commit batched NOTIFY, with `notify: "none"` on the store).
   */
  readonly wake: (
    addresses: ReadonlyArray<Address>,
    options?: { readonly relay?: boolean },
  ) => Effect.Effect<void, BusError>
  /** LISTENs on the relay channel for the life of the scope, so {@link PostgresOutboxService.relayWakeups} fire. */
  readonly watchRelay: Effect.Effect<void, never, Scope.Scope>
  /** Emits when producers committed rows a relay should forward (and after every reconnect). */
  readonly relayWakeups: Stream.Stream<void>
  /** Whom appends wake at commit (the `notify` option). */
  readonly notify: NotifyMode
  /**
   * After-commit batched mode: runs `fn` in `BEGIN … COMMIT` on a pooled connection (the
   * store's pool unless `options.pool`), with `fn` publishing through the client it gets.
   * Those appends send no NOTIFY inside the transaction; after COMMIT their addresses get
   * one NOTIFY per `batchWindowMs` window, sent outside any producer transaction.
   */
  readonly transaction: <A>(fn: (tx: pg.PoolClient) => Promise<A>, options?: TransactionOptions) => Promise<A>
  /** Sends the pending batched NOTIFYs now instead of at the end of the window. */
  readonly flushNotify: Effect.Effect<void>
  /** NOTIFY pressure: the last sample of the monitor (see {@link PressureSnapshot}). */
  readonly pressure: () => PressureSnapshot
  /** Takes a pressure sample now. */
  readonly samplePressure: Effect.Effect<PressureSnapshot, BusError>
  /** What the retention job has done (`enabled: false` when it is off). */
  readonly retention: () => RetentionStatus
}

/** Service tag of the Postgres outbox, for code that needs its Postgres-only parts. */
export class PostgresOutbox extends Context.Service<PostgresOutbox, PostgresOutboxService>()(
  "@bus/postgres-notify/PostgresOutbox",
) {}

const listenerClientConfig = (
  options: PostgresOutboxOptions,
  pool: pg.Pool,
  applicationName: string,
  bounds: { readonly connectTimeoutMs: number; readonly statementTimeoutMs: number },
): pg.ClientConfig => {
  // A pool carries its connection settings in `options`; pool-only fields are ignored by Client.
  const base: pg.ClientConfig = options.connectionString
    ? { connectionString: options.connectionString }
    : { ...((pool as unknown as { options?: pg.ClientConfig }).options ?? {}) }
  return {
    ...base,
    application_name: applicationName,
    keepAlive: true,
    connectionTimeoutMillis:
      options.connectTimeoutMs ?? (base.connectionTimeoutMillis || bounds.connectTimeoutMs),
    // Only LISTEN, UNLISTEN, NOTIFY and a snapshot run here: none may take long, so the
    // server aborts one that does (the heartbeat covers the network side).
    statement_timeout: bounds.statementTimeoutMs,
  }
}

/** Builds the store in the current scope; closing the scope closes every connection, timer and fiber it opened. */
export const makePostgresOutboxStore = (
  options: PostgresOutboxOptions,
): Effect.Effect<PostgresOutboxService, BusError, Scope.Scope> =>
  Effect.gen(function* () {
    const o = resolveOptions(options)
    const schema = yield* Effect.try({
      try: () => schemaName(o.schema),
      catch: (e) => (e instanceof ConfigError ? e : new ConfigError({ message: String(e) })),
    })
    if (!options.pool && !options.connectionString) {
      return yield* new ConfigError({ message: "the Postgres outbox needs a connectionString or a pool" })
    }
    const queries = makeQueries(schema.quoted)

    // Connections of the pool we create, so closing can destroy those a silent peer keeps open.
    const opened = new Set<pg.Client>()
    const pool =
      options.pool ??
      (yield* Effect.acquireRelease(
        Effect.sync(() => {
          const p = new pg.Pool({
            connectionString: options.connectionString,
            application_name: o.applicationName,
            max: o.poolSize,
            connectionTimeoutMillis: o.connectTimeoutMs,
            // Keepalive finds a peer that vanished (a crashed host); only the statement
            // deadlines below find one that is reachable but silent.
            keepAlive: true,
          })
          // An idle pooled connection dropped by the server must not crash the process.
          p.on("error", () => {})
          p.on("connect", (c) => opened.add(c))
          p.on("remove", (c) => opened.delete(c))
          return p
        }),
        (p) => Effect.promise(() => endPoolWithin(p, opened, o.closeGraceMs)),
      ))
    const executor: SqlExecutor = {
      query: (text, params = []) => boundedQuery(pool, o.queryTimeoutMs, text, params),
      // Reads are named: each pooled connection prepares them once (unless `prepare: false`).
      ...(o.prepare
        ? {
            prepared: (name: string, text: string, params: ReadonlyArray<unknown>) =>
              boundedQuery(pool, o.queryTimeoutMs, text, params, name),
          }
        : {}),
    }
    const pollExecutor: SqlExecutor = {
      query: (text, params = []) => boundedQuery(pool, o.pollTimeoutMs, text, params),
    }

    if (o.migrate) yield* migrateEffect({ pool, schema: schema.name })
    const metaRows = yield* runQuery(executor, "loading the outbox meta row", queries.meta)
    const meta = metaRows[0]
    if (meta === undefined) {
      return yield* new ConfigError({
        message: `schema ${schema.name} has no outbox meta row; run migrate()`,
      })
    }
    const epoch = String(meta.epoch)
    if (Number(meta.schema_version) < latestVersion) {
      return yield* new ConfigError({
        message: `schema ${schema.name} is at version ${String(meta.schema_version)}; this package needs ${latestVersion}: run migrate() (bus migrate)`,
      })
    }
    // Publishers in SQL (`bus.publish(…)`, the publish trigger) wake readers as this bus's
    // producers do: they read the mode from meta, so each bus store records its own. Only a
    // store told its mode (postgresOutbox always tells it) records it; tools that open a
    // store to read (bus status, tail) leave it alone.
    if (options.notify !== undefined) {
      yield* runQuery(
        executor,
        "recording the notify mode for SQL publishers",
        `UPDATE ${schema.quoted}.meta SET sql_notify = $1 WHERE sql_notify IS DISTINCT FROM $1`,
        [o.notify],
      )
    }
    const partitionRows = yield* runQuery(
      executor,
      "loading the relay partitions",
      `SELECT relay_partitions FROM ${schema.quoted}.meta`,
    )
    const partitions = Number(partitionRows[0]?.relay_partitions)
    const relayLog = makeRelayLog(executor, makeRelayQueries(schema.quoted, partitions), partitions)
    const adapters = [...(options.adapters ?? []), ...builtinAdapters]
    const relay = relayOps(executor, queries, o.pruneBatchSize)
    const monitor = yield* makePressureMonitor({
      executor,
      schema: schema.name,
      options: o.pressure ?? { intervalMs: 0 },
    })

    const wakeUps = yield* makeWakeUps({
      schema: schema.name,
      executor,
      queries,
      listener: o.listen
        ? {
            client: listenerClientConfig(options, pool, o.listenerApplicationName, {
              connectTimeoutMs: o.connectTimeoutMs,
              statementTimeoutMs: Math.max(o.heartbeatTimeoutMs, 1_000),
            }),
            probeTimeoutMs: o.probeTimeoutMs,
            reprobeIntervalMs: 30_000,
            initialDelayMs: o.reconnectInitialDelayMs,
            maxDelayMs: o.reconnectMaxDelayMs,
            heartbeatIntervalMs: o.heartbeatIntervalMs,
            heartbeatTimeoutMs: o.heartbeatTimeoutMs,
            closeGraceMs: o.closeGraceMs,
          }
        : undefined,
      pollIntervalMs: o.pollIntervalMs,
      degradedPollIntervalMs: o.degradedPollIntervalMs,
      pollExecutor,
    })

    const wake = (
      addresses: ReadonlyArray<Address>,
      wakeOptions: { readonly relay?: boolean } = {},
    ): Effect.Effect<void, BusError> =>
      Effect.gen(function* () {
        const checked = yield* Effect.forEach(addresses, (a) => checkAddress(a))
        const { channels, payloads } = wakeUpsFor(
          schema.name,
          wakeOptions.relay ? "both" : "addresses",
          checked,
        )
        if (channels.length > 0) {
          yield* wakeUps.sendNotify(channels, payloads)
          monitor.count()
        }
      })

    // After-commit batched NOTIFY: one statement per window, whom the store's mode names
    // (addresses when the mode is "none": the SDK owns these commits, so it wakes them).
    const batchMode: NotifyMode = o.notify === "none" ? "addresses" : o.notify
    const batcher = yield* makeNotifyBatcher({
      windowMs: o.batchWindowMs,
      send: (addresses) => {
        const { channels, payloads } = wakeUpsFor(schema.name, batchMode, addresses)
        if (channels.length === 0) return Effect.void
        return wakeUps
          .sendNotify(channels, payloads)
          .pipe(Effect.tap(() => Effect.sync(() => monitor.count())))
      },
    })
    const deferred: DeferredTransactions = new WeakMap()

    // A relay in this process hears this process's appends at once, whatever the notify
    // mode: in broker mode producers send no NOTIFY inside their transaction (the commit
    // lock the flip escapes), so this is the relay's wake-up. Appends in one tick share one
    // signal per partition; the relay looks again a few times as their transactions commit.
    const relayWakeups = yield* Effect.acquireRelease(PubSub.sliding<number>(64), PubSub.shutdown)
    let signalled: Set<number> | undefined
    const signalAppend = (events: ReadonlyArray<Envelope>) => {
      const first = signalled === undefined
      signalled ??= new Set()
      for (const e of events) signalled.add(relayPartitionOf(e.tenant, e.channel, partitions))
      if (!first) return
      queueMicrotask(() => {
        const list = signalled ?? new Set<number>()
        signalled = undefined
        for (const partition of list) PubSub.publishUnsafe(relayWakeups, partition)
      })
      if (o.relayWake === "notify" && o.notify !== "relay" && o.notify !== "both") wakeOtherRelays()
    }
    // relayWake "notify": one relay NOTIFY in flight per process, the next one after it and
    // after relayWakeIntervalMs; appends meanwhile share it.
    let wakeInFlight = false
    let wakeAgain = false
    let wakeFiber: Fiber.Fiber<void> | undefined
    yield* Effect.addFinalizer(() => (wakeFiber === undefined ? Effect.void : Fiber.interrupt(wakeFiber)))
    const wakeOtherRelays = (): void => {
      if (wakeInFlight) {
        wakeAgain = true
        return
      }
      wakeInFlight = true
      wakeFiber = Effect.runFork(
        wakeUps.sendNotify([relayChannel(schema.name)], [relayPayload]).pipe(
          Effect.ignore,
          Effect.andThen(Effect.sleep(o.relayWakeIntervalMs)),
          Effect.ensuring(
            Effect.sync(() => {
              wakeInFlight = false
              if (wakeAgain) {
                wakeAgain = false
                wakeOtherRelays()
              }
            }),
          ),
        ),
      )
    }
    // Broker deployments: relays hear producers' relay NOTIFYs through `changes`.
    let changes: Stream.Stream<Address> = wakeUps.changes
    let relayWakeupStream: Stream.Stream<number> = Stream.fromPubSub(relayWakeups)
    if (o.watchRelay && o.listen) {
      yield* wakeUps.watchRelay
      changes = Stream.merge(wakeUps.changes, wakeUps.relayWakeups.pipe(Stream.map(() => relayWakeupAddress)))
      relayWakeupStream = Stream.merge(relayWakeupStream, wakeUps.relayWakeups.pipe(Stream.map(() => -1)))
    }

    const retention = yield* makeRetentionJob({
      options: o.retention,
      defaultKeepUnforwarded: o.notify === "relay" || o.notify === "both",
      prune: relay.prune,
    })

    const append: (tx: unknown, events: ReadonlyArray<Envelope>) => Effect.Effect<void, BusError> =
      makeAppend({
        adapters,
        schema: schema.name,
        statements: queries.append,
        prepare: o.prepare,
        notify: o.notify,
        // A transaction the SDK runs (batched mode) sends its wake-ups after COMMIT instead.
        deferNotify: (tx, addresses) => deferAddresses(deferred, tx, addresses),
        onNotified: () => monitor.count(),
      })

    const ownEpoch = compactEpoch(epoch)
    const ownsCursor = (cursor: string): boolean => {
      const decoded = decodeCursor(cursor)
      return !(decoded instanceof CursorInvalid) && decoded.epoch === ownEpoch
    }
    // The relay asks about many rows against the same few cursors (an address's position):
    // decode each once (its check is a SHA-256), in a small cache.
    const decodedCursors = new Map<string, ReturnType<typeof decodeCursor>>()
    const decodeCached = (cursor: string) => {
      let decoded = decodedCursors.get(cursor)
      if (decoded === undefined) {
        if (decodedCursors.size >= 256) decodedCursors.clear()
        decoded = decodeCursor(cursor)
        decodedCursors.set(cursor, decoded)
      }
      return decoded
    }
    const covers = (cursor: string, position: string): boolean | undefined => {
      const decoded = decodeCached(cursor)
      const at = decodePosition(position)
      if (decoded instanceof CursorInvalid || at === undefined || decoded.epoch !== at.epoch) return undefined
      return coversPosition(decoded, at.position)
    }

    const service: PostgresOutboxService = {
      name: transportName,
      schema: schema.name,
      epoch,
      pool,
      // A relay runs only beside a broker (notify "none", "relay" or "both"): only then does
      // an append signal one (the postgres-notify path pays nothing for it).
      append:
        o.notify === "addresses"
          ? append
          : (tx: unknown, events: ReadonlyArray<Envelope>) =>
              append(tx, events).pipe(Effect.tap(() => Effect.sync(() => signalAppend(events)))),
      read: (address, after, limit) => read(executor, queries, address, after, limit),
      head: (address) => head(executor, queries, address),
      changes,
      watch: wakeUps.watch,
      relay: { ...relayLog, wakeups: relayWakeupStream },
      claimGroup: (address, group) =>
        claimGroup(executor, queries, o.groupLeaseMs, address, group, o.closeGraceMs),
      members: makeMembership(executor, schema.quoted),
      ownsCursor,
      covers,
      handled: relay.handled,
      markHandled: relay.markHandled,
      groupCursor: relay.groupCursor,
      deadLetter: relay.deadLetter,
      deadLetters: relay.deadLetters,
      prune: relay.prune,
      health: Effect.sync(wakeUps.health),
      healthNow: wakeUps.health,
      watchedChannels: wakeUps.watchedChannels,
      wake,
      watchRelay: wakeUps.watchRelay,
      relayWakeups: wakeUps.relayWakeups,
      notify: o.notify,
      transaction: (fn, txOptions) => runTransaction(txOptions?.pool ?? pool, deferred, batcher, fn),
      flushNotify: batcher.flush,
      pressure: monitor.snapshot,
      samplePressure: monitor.sample,
      retention,
    }
    return service
  })

/**
 * One layer providing the Postgres outbox as every service of the core outbox contract
 * (`OutboxWriter`, `OutboxReader`, `OutboxRelay`, `GroupStore`, `DeadLetterStore`,
 * `OutboxRetention`) and as {@link PostgresOutbox}, as Effect's `PgClient` layer provides
 * `PgClient | SqlClient`. Connections, the listener and the poll live as long as the layer.
 */
export const postgresOutboxLayer = (
  options: PostgresOutboxOptions,
): Layer.Layer<OutboxServices | PostgresOutbox, BusError> =>
  Layer.effectContext(
    Effect.map(makePostgresOutboxStore(options), (service) =>
      outboxContext(partsOf(service)).pipe(Context.add(PostgresOutbox, service)),
    ),
  )

/** A store built outside Effect, with the means to close it. */
export interface PostgresOutboxHandle {
  readonly store: PostgresOutboxService
  /** LISTEN/NOTIFY state (see {@link NotifyHealth}). */
  readonly health: () => NotifyHealth
  /** NOTIFY pressure (see {@link PressureSnapshot}). */
  readonly pressure: () => PressureSnapshot
  /** After-commit batched mode (see {@link PostgresOutboxService.transaction}). */
  readonly transaction: <A>(fn: (tx: pg.PoolClient) => Promise<A>, options?: TransactionOptions) => Promise<A>
  /** Closes the listener, the poll and (when the store created it) the pool. Idempotent. */
  readonly close: () => Promise<void>
}

/** Promise form of {@link makePostgresOutboxStore} for code that does not use Effect. */
export const createPostgresOutboxStore = async (
  options: PostgresOutboxOptions,
): Promise<PostgresOutboxHandle> => {
  const scope = Effect.runSync(Scope.make())
  const exit = await Effect.runPromiseExit(Scope.provide(makePostgresOutboxStore(options), scope))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    throw Cause.squash(exit.cause)
  }
  const store = exit.value
  let closing: Promise<void> | undefined
  return {
    store,
    health: store.healthNow,
    pressure: store.pressure,
    transaction: store.transaction,
    close: () => {
      closing ??= Effect.runPromise(Scope.close(scope, Exit.void))
      return closing
    },
  }
}
