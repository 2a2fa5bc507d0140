import type pg from "pg"
import type { NotifyMode } from "./outbox/append.js"
import type { RetentionOptions } from "./outbox/retention.js"
import type { PressureOptions } from "./pressure/monitor.js"
import type { TransactionAdapter } from "./sql/adapter.js"

/**
 * Options of the Postgres outbox store, with their defaults.
 *
 * @module
 */

/** Options of {@link makePostgresOutboxStore} / {@link createPostgresOutboxStore}. */
export interface PostgresOutboxOptions {
  /** Connection string for the store's own pool and its LISTEN connection. */
  readonly connectionString?: string
  /**
   * A pool to use for reads, relay and group queries instead of creating one (it is
   * not closed by the store). The LISTEN connection is still a separate client, built
   * from the pool's connection settings.
   */
  readonly pool?: pg.Pool
  /** Schema of the outbox tables (default `bus`). */
  readonly schema?: string
  /** `application_name` of the store's pool connections (default `bus`). */
  readonly applicationName?: string
  /** `application_name` of the LISTEN connection (default `bus-listener`). */
  readonly listenerApplicationName?: string
  /** Size of the pool the store creates (default 10). */
  readonly poolSize?: number
  /** Run {@link migrate} at start (default `true`; safe from many processes at once). */
  readonly migrate?: boolean
  /**
   * Whom an append wakes at commit: `addresses` (subscribers, default), `relay` (a
   * broker relay only), `both`, or `none` (the SDK sends wake-ups after commit itself).
   */
  readonly notify?: NotifyMode
  /** Open the LISTEN connection (default `true`). Producer-only processes may turn it off. */
  readonly listen?: boolean
  /** Fallback poll interval while NOTIFY is healthy (default 10 000 ms; 0 disables). */
  readonly pollIntervalMs?: number
  /** Poll interval while NOTIFY is degraded or `listen` is off (default 1 000 ms). */
  readonly degradedPollIntervalMs?: number
  /** How long the start-up self-probe waits for its own NOTIFY (default 2 000 ms). */
  readonly probeTimeoutMs?: number
  /**
   * Heartbeat of the LISTEN connection: every `heartbeatIntervalMs` (default 5 000) it
   * NOTIFYs itself through that connection; a notification not back within
   * `heartbeatTimeoutMs` (default 5 000) declares the connection dead (a silent NAT or
   * proxy keeps a dead socket open for ever): it is destroyed and reconnected. A silent
   * connection is so detected within `heartbeatIntervalMs + heartbeatTimeoutMs` (10 s).
   */
  readonly heartbeatIntervalMs?: number
  readonly heartbeatTimeoutMs?: number
  /**
   * Deadline of every statement the store runs on its pool (reads, heads, group
   * positions, the relay's statements, pressure samples), checkout included (default
   * 15 000 ms; 0: none). A statement that misses it fails with a retryable
   * `TransportUnavailable` and its connection is destroyed, so it never holds a pool slot.
   */
  readonly queryTimeoutMs?: number
  /** Deadline of each fallback poll (default 5 000 ms), so one hung poll never holds up the next. */
  readonly pollTimeoutMs?: number
  /**
   * Connect timeout of the LISTEN connection and of the pool the store creates (default
   * 10 000 ms; a `pool` you pass keeps its own `connectionTimeoutMillis`).
   */
  readonly connectTimeoutMs?: number
  /**
   * How long closing the store waits for connections to end politely before destroying
   * their sockets (default 2 000 ms): `close()` returns within about this (plus 1 s)
   * whatever the network does.
   */
  readonly closeGraceMs?: number
  /** First LISTEN reconnect delay (default 100 ms); doubles up to `reconnectMaxDelayMs` (default 10 000 ms), jittered. */
  readonly reconnectInitialDelayMs?: number
  readonly reconnectMaxDelayMs?: number
  /** Lease of a consumer group's claim, renewed at a third of it (default 15 000 ms). */
  readonly groupLeaseMs?: number
  /** Rows deleted per prune statement (default 5 000). */
  readonly pruneBatchSize?: number
  /** Extra transaction adapters, tried before the built-in ones. */
  readonly adapters?: ReadonlyArray<TransactionAdapter>
  /**
   * Window of the after-commit batched NOTIFY used by `transaction(fn)` (default 10 ms):
   * every address committed within one window gets one NOTIFY, sent after the window.
   */
  readonly batchWindowMs?: number
  /** The NOTIFY-pressure monitor (default on, sampling every 5 s); `false` turns it off. */
  readonly pressure?: PressureOptions | false
  /** The scheduled retention job; off unless given (`true` for the defaults: 7 days, hourly). */
  readonly retention?: RetentionOptions | boolean
  /**
   * LISTEN on the relay channel for the store's life and signal relay wake-ups on
   * `changes` (as {@link relayWakeupAddress}) and `relay.wakeups`, so the core relay forwards
   * without waiting for its idle poll. Default: true when `listen` is on and `notify` is
   * `relay` or `both`, or `relayWake` is `notify`.
   */
  readonly watchRelay?: boolean
  /**
   * How appends wake relays when producers send no relay NOTIFY in their transaction (the
   * broker default, `notify: "none"`). `process` (default): only a relay in this process,
   * at once, at no cost. `notify`: also relays in other processes, by one small NOTIFY on the
   * relay channel sent after the append on a pooled connection, outside the producer's
   * transaction (so it takes no commit lock inside it), single-flight and at most one per
   * `relayWakeIntervalMs` per process. Use it when producers and relays run in different
   * processes (a fleet); otherwise their events wait for the relay's poll (`maxIdleMs`).
   */
  readonly relayWake?: "process" | "notify"
  /** Least time between two relay NOTIFYs of `relayWake: "notify"` (default 5 ms). */
  readonly relayWakeIntervalMs?: number
  /**
   * Keep the append and read statements prepared on each connection (named statements:
   * parsed and planned once per connection instead of on every call). Default true. Set
   * false when connections go through a pooler that cannot carry named prepared statements
   * (pgbouncer in transaction mode before 1.21, or without `max_prepared_statements`).
   */
  readonly prepare?: boolean
}

/** Options with every default applied. */
export const resolveOptions = (o: PostgresOutboxOptions) => ({
  schema: o.schema ?? "bus",
  applicationName: o.applicationName ?? "bus",
  listenerApplicationName: o.listenerApplicationName ?? "bus-listener",
  poolSize: o.poolSize ?? 10,
  migrate: o.migrate ?? true,
  notify: o.notify ?? ("addresses" as NotifyMode),
  listen: o.listen ?? true,
  pollIntervalMs: Math.max(0, o.pollIntervalMs ?? 10_000),
  degradedPollIntervalMs: Math.max(0, o.degradedPollIntervalMs ?? 1_000),
  probeTimeoutMs: Math.max(1, o.probeTimeoutMs ?? 2_000),
  reconnectInitialDelayMs: Math.max(1, o.reconnectInitialDelayMs ?? 100),
  reconnectMaxDelayMs: Math.max(1, o.reconnectMaxDelayMs ?? 10_000),
  heartbeatIntervalMs: Math.max(1, o.heartbeatIntervalMs ?? 5_000),
  heartbeatTimeoutMs: Math.max(1, o.heartbeatTimeoutMs ?? 5_000),
  queryTimeoutMs: Math.max(0, o.queryTimeoutMs ?? 15_000),
  pollTimeoutMs: Math.max(1, o.pollTimeoutMs ?? 5_000),
  connectTimeoutMs: Math.max(1, o.connectTimeoutMs ?? 10_000),
  closeGraceMs: Math.max(0, o.closeGraceMs ?? 2_000),
  groupLeaseMs: Math.max(30, o.groupLeaseMs ?? 15_000),
  pruneBatchSize: Math.max(1, o.pruneBatchSize ?? 5_000),
  batchWindowMs: Math.max(0, o.batchWindowMs ?? 10),
  pressure: o.pressure === false ? undefined : (o.pressure ?? {}),
  retention: o.retention === true ? {} : o.retention === false ? undefined : o.retention,
  watchRelay:
    o.watchRelay ??
    ((o.listen ?? true) && (o.notify === "relay" || o.notify === "both" || o.relayWake === "notify")),
  relayWake: o.relayWake ?? "process",
  relayWakeIntervalMs: Math.max(0, o.relayWakeIntervalMs ?? 5),
  prepare: o.prepare ?? true,
})
