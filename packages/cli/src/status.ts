import { ConfigError } from "@bus/core"
import {
  type BrokerName,
  defaultNotifyRateThreshold,
  selectionFromEnv,
  selectTransport,
} from "@bus/core/adapter"
import type { NotifyHealth } from "@bus/postgres-notify"
import { createPostgresOutboxStore, latestVersion, pressureSql } from "@bus/postgres-notify/adapter"
import { Effect, Exit, Layer, ManagedRuntime, Option, References } from "effect"
import { type BrokerUrls, brokerTransport } from "./brokers.js"
import { CliError, postgresError, redact } from "./errors.js"
import { withOutboxClient } from "./outboxClient.js"
import { count, duration, type Styles, table } from "./style.js"

/**
 * `bus status`: what an operator needs to know about one outbox. Which transport is
 * configured and which the running processes use, whether LISTEN/NOTIFY works (a
 * self-probe), how close notifying commits are to the threshold where NOTIFY's commit lock
 * starts to serialise writes, the outbox backlog and relay lag, who relays which partition
 * (schema v4), dead letters, consumer groups, and the transport this suggests. Every figure comes from the database (and, when
 * given, the broker); nothing has to run inside the application.
 *
 * @module
 */

/** Options of {@link collectStatus}. */
export interface StatusOptions {
  readonly url: string
  readonly schema: string
  /** Seconds of outbox history the notify rate is measured over (default 10). */
  readonly windowSeconds: number
  /** Notifying commits/s at which to leave NOTIFY (default: `BUS_NOTIFY_RATE_THRESHOLD`, else 1000). */
  readonly threshold?: number | undefined
  readonly env: Readonly<Record<string, string | undefined>>
  readonly brokers: BrokerUrls
  /** How long the self-probe may take (default 2 000 ms). */
  readonly probeTimeoutMs?: number
  /**
   * A `bus-listener` backend idle longer than this is reported silent (default 30 s): a
   * live listener runs its heartbeat every 5 s, so one this quiet lost its client.
   */
  readonly silentListenerSeconds?: number
}

/** Everything `bus status` reports (`--json` prints it as is). */
export interface StatusReport {
  readonly database: { readonly url: string; readonly serverVersion: string }
  readonly schema: {
    readonly name: string
    readonly version: number
    readonly expected: number
    readonly epoch: string
  }
  readonly transport: {
    /** What `BUS_*` in this environment selects (the same rules as the bus). */
    readonly configured: { readonly transport: string; readonly reason: string } | { readonly error: string }
    /**
     * Connections of running buses per transport (from their `application_name`);
     * `unnamed` for stores built without `postgresOutbox()`, which cannot say.
     */
    readonly running: ReadonlyArray<{ readonly transport: string; readonly connections: number }>
    /** LISTEN connections of running buses (`bus-listener`). */
    readonly listeners: number
  }
  readonly notify: {
    /** The self-probe's verdict, `degraded` too when running buses have silent LISTEN backends. */
    readonly state: NotifyHealth["notify"]
    readonly reason: string | undefined
    readonly probeMs: number
    /**
     * LISTEN backends of running buses (`bus-listener`) idle past `silentListenerSeconds`,
     * and the longest silence: the server side of half-open connections (a NAT or proxy
     * dropped the flow). Their buses reconnected on their own, but the server keeps the
     * backend until TCP keepalive gives up, and a backend that cannot deliver holds back
     * the notification queue (see `notificationQueueUsage`).
     */
    readonly silentListeners: number
    readonly longestSilenceSeconds: number
  }
  readonly pressure: {
    readonly windowSeconds: number
    /** Producer transactions that appended to the outbox per second: each sends one NOTIFY at commit. */
    readonly notifyingCommitsPerSecond: number
    readonly eventsPerSecond: number
    readonly databaseCommitsPerSecond: number | undefined
    readonly threshold: number
    readonly thresholdRatio: number
    readonly level: "ok" | "near-threshold" | "over-threshold"
    readonly notifyCommitLockWaits: number
    readonly notifyQueueWaits: number
    readonly notificationQueueUsage: number
  }
  readonly outbox: {
    readonly rowsEstimate: number
    readonly oldestEventAt: string | undefined
    /**
     * Rows no relay position covers: the store's `relay.backlog` (an upper bound: rows a
     * fairness round sent ahead of their partition's position count too), counted up to a cap.
     */
    readonly unforwarded: number
    /** True when `unforwarded` stopped counting at its cap. */
    readonly unforwardedCapped: boolean
    /** Commit time of the oldest row no relay position covers. */
    readonly oldestUnforwardedAt: string | undefined
    /** Age of the oldest event the relay has not forwarded (meaningful while a broker is in use). */
    readonly relayLagMs: number | undefined
  }
  /** The relay's partitions (`relay_partitions`) and the relays sharing them. */
  readonly relay: {
    /** Relays that renewed their membership within their lease (`relay_members`). */
    readonly live: number
    readonly partitions: ReadonlyArray<{
      readonly partition: number
      /** The relay that holds or last held it; `undefined` once released. */
      readonly owner: string | undefined
      readonly leaseUntil: string | undefined
      /** The lease is running: `owner` relays the partition now. */
      readonly held: boolean
      /** When a relay last claimed it or stored its position. */
      readonly updatedAt: string | undefined
    }>
  }
  readonly deadLetters: {
    readonly outbox: number
    readonly lastAt: string | undefined
    readonly bySource: ReadonlyArray<{ readonly source: string; readonly count: number }>
    readonly broker?: { readonly transport: string; readonly count?: number; readonly error?: string }
  }
  readonly groups: ReadonlyArray<{
    readonly tenant: string
    readonly channel: string
    readonly group: string
    /** `outbox`: the group has a position in the outbox (it ran on postgres-notify). */
    readonly position: "outbox" | "none"
    readonly held: boolean
    readonly lastCommitAt: string | undefined
    readonly handledLastMinute: number
  }>
  readonly recommendation: {
    readonly transport: string
    readonly level: "ok" | "plan" | "act" | "check"
    readonly reason: string
  }
}

const unforwardedCap = 100_000
const rowCountCap = 1_000_000

const iso = (u: unknown): string | undefined =>
  u === null || u === undefined
    ? undefined
    : u instanceof Date
      ? u.toISOString()
      : new Date(String(u)).toISOString()

/** Collects the report. Throws {@link CliError} with an actionable message when it cannot. */
export const collectStatus = async (options: StatusOptions): Promise<StatusReport> => {
  const { url, schema } = options
  const S = `"${schema}"`
  return withOutboxClient(url, schema, async (client) => {
    const q = async (text: string, params: ReadonlyArray<unknown> = []) => {
      try {
        return (await client.query(text, [...params])).rows as Array<Record<string, unknown>>
      } catch (error) {
        throw postgresError(error, url, schema)
      }
    }
    const started = Date.now()
    const [server] = await q("SELECT current_setting('server_version') AS version")
    const [meta] = await q(`SELECT schema_version, epoch::text AS epoch FROM ${S}.meta`)
    const version = Number(meta?.schema_version ?? 0)
    if (version < latestVersion) {
      throw new CliError(
        `the outbox in schema "${schema}" is at version ${version}; this bus expects ${latestVersion}: run \`bus migrate\``,
      )
    }
    // The partition count is written into the relay index's expression: the queries below
    // repeat it as a literal, so the planner reads each partition as one index range.
    const [partitionCount] = await q(`SELECT relay_partitions FROM ${S}.meta`)
    const partitions = Number(partitionCount?.relay_partitions)
    if (!Number.isSafeInteger(partitions) || partitions < 1) {
      throw new CliError(`the outbox in schema "${schema}" has no valid relay partition count`)
    }
    const commitsBefore = await q(
      "SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = current_database()",
    )

    // The self-probe: the store's own listener LISTENs, NOTIFYs itself through the pool
    // (as producers do) and reports whether the notification came back.
    const probeStarted = Date.now()
    let health: NotifyHealth
    const store = await createPostgresOutboxStore({
      connectionString: url,
      schema,
      migrate: false,
      pressure: false,
      pollIntervalMs: 0,
      poolSize: 2,
      applicationName: "bus-cli",
      listenerApplicationName: "bus-cli-probe",
      probeTimeoutMs: options.probeTimeoutMs ?? 2_000,
      reconnectMaxDelayMs: 1_000,
    }).catch((error: unknown) => {
      throw postgresError(error, url, schema)
    })
    try {
      const deadline = Date.now() + (options.probeTimeoutMs ?? 2_000) + 3_000
      while (store.health().notify === "starting" && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20))
      }
      health = store.health()
    } finally {
      await store.close()
    }
    const probeMs = Date.now() - probeStarted

    const window = Math.max(1, options.windowSeconds)
    const [rate] = await q(
      `SELECT count(DISTINCT xid)::int AS tx, count(*)::int AS events FROM ${S}.outbox
       WHERE event_time >= now() - $1::int * interval '1 second'`,
      [window],
    )
    const [pressure] = await q(pressureSql)
    // Database commits over at least a second (statistics are flushed about once a second).
    const wait = 1_000 - (Date.now() - started)
    if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    const commitsAfter = await q(
      "SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    const before = commitsBefore[0]?.n
    const after = commitsAfter[0]?.n
    const databaseCommitsPerSecond =
      before === undefined || after === undefined
        ? undefined
        : Number(BigInt(String(after)) - BigInt(String(before))) / ((Date.now() - started) / 1_000)

    // The planner's estimate for a large outbox; an exact (capped) count for a small or
    // never-analysed one.
    const [rows] = await q(
      `SELECT CASE WHEN c.reltuples >= ${rowCountCap} THEN c.reltuples::bigint
                   ELSE (SELECT count(*) FROM (SELECT 1 FROM ${S}.outbox LIMIT ${rowCountCap}) x) END::text AS estimate,
              (SELECT min(event_time) FROM ${S}.outbox) AS oldest
       FROM pg_class c WHERE c.oid = $1::regclass`,
      [`${S}.outbox`],
    )
    // The store's relay backlog (rows past each partition's covered snapshot; rows a v3
    // relay forwarded or parked are done), counted per partition up to the cap: without a
    // relay (postgres-notify) every row of a large outbox would be counted otherwise.
    const uncovered = `${S}.relay_partition(o.tenant, o.channel, ${partitions}) = rp.partition
           AND o.xid >= pg_snapshot_xmin(rp.covered) AND NOT pg_visible_in_snapshot(o.xid, rp.covered)
           AND o.forwarded_at IS NULL AND o.parked_at IS NULL`
    const [unforwarded] = await q(
      `SELECT coalesce(sum(c.n), 0)::int AS n FROM ${S}.relay_partitions rp CROSS JOIN LATERAL (
         SELECT count(*) AS n FROM (SELECT 1 FROM ${S}.outbox o WHERE ${uncovered} LIMIT ${unforwardedCap + 1}) x
       ) c`,
    )
    // The first uncovered row of each partition, in the relay's (xid, seq) order.
    const [oldestUnforwarded] = await q(
      `SELECT min(f.event_time) AS event_time FROM ${S}.relay_partitions rp CROSS JOIN LATERAL (
         SELECT o.event_time FROM ${S}.outbox o WHERE ${uncovered} ORDER BY o.xid, o.seq LIMIT 1
       ) f`,
    )
    const relayPartitions = await q(
      `SELECT partition, owner, lease_until, coalesce(lease_until >= clock_timestamp(), false) AS held, updated_at
       FROM ${S}.relay_partitions ORDER BY partition`,
    )
    const [liveRelays] = await q(
      `SELECT count(*)::int AS n FROM ${S}.relay_members WHERE seen_until >= clock_timestamp()`,
    )
    const [dead] = await q(`SELECT count(*)::int AS n, max(at) AS last FROM ${S}.dead_letters`)
    const bySource = await q(
      `SELECT source, count(*)::int AS n FROM ${S}.dead_letters GROUP BY source ORDER BY 2 DESC LIMIT 10`,
    )
    const groups = await q(
      `WITH recent AS (
         SELECT tenant, channel, group_name, count(*)::int AS n FROM ${S}.group_inbox
         WHERE handled_at >= now() - interval '1 minute' GROUP BY 1, 2, 3
       )
       SELECT coalesce(g.tenant, r.tenant) AS tenant, coalesce(g.channel, r.channel) AS channel,
              coalesce(g.group_name, r.group_name) AS group_name,
              g.group_name IS NOT NULL AS has_position,
              coalesce(g.owner IS NOT NULL AND g.lease_until > now(), false) AS held,
              g.updated_at, coalesce(r.n, 0) AS handled
       FROM ${S}.consumer_groups g FULL JOIN recent r
         ON r.tenant = g.tenant AND r.channel = g.channel AND r.group_name = g.group_name
       ORDER BY coalesce(r.n, 0) DESC, g.updated_at DESC NULLS LAST
       LIMIT 50`,
    )
    const running = await q(
      `SELECT application_name AS name, count(*)::int AS n FROM pg_stat_activity
       WHERE datname = current_database() AND pid <> pg_backend_pid()
         AND (application_name LIKE 'bus (%)' OR application_name IN ('bus', 'bus-listener'))
       GROUP BY 1 ORDER BY 1`,
    )

    // Listeners run a heartbeat statement every 5 s; one idle far longer has lost its client.
    const silentAfter = Math.max(1, options.silentListenerSeconds ?? 30)
    const [silent] = await q(
      `SELECT count(*)::int AS n,
              coalesce(max(extract(epoch FROM now() - state_change)), 0)::float8 AS longest
       FROM pg_stat_activity
       WHERE datname = current_database() AND application_name = 'bus-listener' AND state = 'idle'
         AND state_change < now() - $1::float8 * interval '1 second'`,
      [silentAfter],
    )
    const silentListeners = Number(silent?.n ?? 0)
    const longestSilenceSeconds = Math.round(Number(silent?.longest ?? 0))
    const notifyState: NotifyHealth["notify"] =
      silentListeners > 0 && health.notify !== "disabled" ? "degraded" : health.notify
    const silentReason =
      silentListeners > 0
        ? `${silentListeners} LISTEN backend(s) of running buses silent for up to ${longestSilenceSeconds} s ` +
          "(half-open connections: their buses reconnected, the server still holds them); " +
          "end them with pg_terminate_backend, and set tcp_keepalives_idle / client_connection_check_interval"
        : undefined
    const notifyReason =
      silentReason === undefined
        ? health.reason
        : health.notify === "degraded" && health.reason !== undefined
          ? `${health.reason}; ${silentReason}`
          : silentReason

    // Configuration as this environment's BUS_* variables select it (the rules of the bus).
    const selection = selectionFromEnv({}, options.env)
    const choice = selection instanceof ConfigError ? selection : selectTransport(selection)
    const configured =
      choice instanceof ConfigError
        ? { error: choice.message }
        : { transport: choice.transport, reason: choice.reason }
    // Buses built with postgresOutbox() name their pool connections after their transport;
    // a store built by hand keeps the plain name "bus".
    const runningByTransport = running
      .filter((r) => String(r.name).startsWith("bus (") || r.name === "bus")
      .map((r) => ({
        transport: r.name === "bus" ? "unnamed" : String(r.name).slice(5, -1),
        connections: Number(r.n),
      }))
    const listeners = running.filter((r) => r.name === "bus-listener").reduce((n, r) => n + Number(r.n), 0)

    const envThreshold = Number(options.env.BUS_NOTIFY_RATE_THRESHOLD)
    const threshold =
      options.threshold ??
      (Number.isFinite(envThreshold) && envThreshold > 0 ? envThreshold : defaultNotifyRateThreshold)
    const notifyingCommitsPerSecond = Number(rate?.tx ?? 0) / window
    const ratio = notifyingCommitsPerSecond / threshold
    const level = ratio >= 1 ? "over-threshold" : ratio >= 0.8 ? "near-threshold" : "ok"
    const lockWaits = Number(pressure?.commit_lock_waits ?? 0)
    const oldestUnforwardedAt = iso(oldestUnforwarded?.event_time)
    const unforwardedCount = Number(unforwarded?.n ?? 0)

    // Dead letters the broker's consumer groups parked live in the broker.
    const brokerInUse =
      runningByTransport.find((r) => r.transport === "nats" || r.transport === "redis-streams")?.transport ??
      ("transport" in configured &&
      (configured.transport === "nats" || configured.transport === "redis-streams")
        ? configured.transport
        : undefined)
    let broker: StatusReport["deadLetters"]["broker"]
    if (brokerInUse === "nats" || brokerInUse === "redis-streams") {
      const haveUrl = brokerInUse === "nats" ? options.brokers.nats : options.brokers.redis
      if (haveUrl !== undefined) broker = await brokerDeadLetters(brokerInUse, options.brokers)
    }

    const report: Omit<StatusReport, "recommendation"> = {
      database: { url: redact(url), serverVersion: String(server?.version ?? "") },
      schema: { name: schema, version, expected: latestVersion, epoch: String(meta?.epoch ?? "") },
      transport: { configured, running: runningByTransport, listeners },
      notify: {
        state: notifyState,
        reason: notifyReason,
        probeMs,
        silentListeners,
        longestSilenceSeconds,
      },
      pressure: {
        windowSeconds: window,
        notifyingCommitsPerSecond: round(notifyingCommitsPerSecond),
        eventsPerSecond: round(Number(rate?.events ?? 0) / window),
        databaseCommitsPerSecond:
          databaseCommitsPerSecond === undefined ? undefined : round(databaseCommitsPerSecond),
        threshold,
        thresholdRatio: round(ratio, 3),
        level,
        notifyCommitLockWaits: lockWaits,
        notifyQueueWaits: Number(pressure?.queue_waits ?? 0),
        notificationQueueUsage: Number(pressure?.queue_usage ?? 0),
      },
      outbox: {
        rowsEstimate: Number(rows?.estimate ?? 0),
        oldestEventAt: iso(rows?.oldest),
        unforwarded: Math.min(unforwardedCount, unforwardedCap),
        unforwardedCapped: unforwardedCount > unforwardedCap,
        oldestUnforwardedAt,
        // Only a broker has a relay: on postgres-notify nothing is ever forwarded.
        relayLagMs:
          brokerInUse === undefined
            ? undefined
            : oldestUnforwardedAt === undefined
              ? 0
              : Date.now() - Date.parse(oldestUnforwardedAt),
      },
      relay: {
        live: Number(liveRelays?.n ?? 0),
        partitions: relayPartitions.map((p) => ({
          partition: Number(p.partition),
          owner: p.owner === null || p.owner === undefined ? undefined : String(p.owner),
          leaseUntil: iso(p.lease_until),
          held: p.held === true,
          updatedAt: iso(p.updated_at),
        })),
      },
      deadLetters: {
        outbox: Number(dead?.n ?? 0),
        lastAt: iso(dead?.last),
        bySource: bySource.map((r) => ({ source: String(r.source), count: Number(r.n) })),
        ...(broker !== undefined ? { broker } : {}),
      },
      groups: groups.map((g) => ({
        tenant: String(g.tenant),
        channel: String(g.channel),
        group: String(g.group_name),
        position: g.has_position === true ? "outbox" : "none",
        held: g.held === true,
        lastCommitAt: iso(g.updated_at),
        handledLastMinute: Number(g.handled),
      })),
    }
    return { ...report, recommendation: recommend(report, options.env, brokerInUse) }
  })
}

const round = (n: number, digits = 1): number => {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

const brokerDeadLetters = async (
  transport: "nats" | "redis-streams",
  urls: BrokerUrls,
): Promise<NonNullable<StatusReport["deadLetters"]["broker"]>> => {
  try {
    const layer = await brokerTransport(transport, urls, { connectTimeoutMs: 3_000 })
    const runtime = ManagedRuntime.make(
      layer.pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "None"))),
    )
    try {
      const { Transport } = await import("@bus/core/adapter")
      const exit = await runtime.runPromiseExit(
        Transport.use((t) => t.deadLetters(10_000)).pipe(Effect.timeout("5 seconds")),
      )
      if (Exit.isSuccess(exit)) return { transport, count: exit.value.length }
      const error = Option.getOrUndefined(Exit.findErrorOption(exit))
      return { transport, error: error instanceof Error ? error.message : "no answer" }
    } finally {
      await runtime.dispose()
    }
  } catch (error) {
    return { transport, error: error instanceof Error ? error.message : String(error) }
  }
}

/** The transport the figures suggest, and why. */
const recommend = (
  r: Omit<StatusReport, "recommendation">,
  env: Readonly<Record<string, string | undefined>>,
  brokerInUse: string | undefined,
): StatusReport["recommendation"] => {
  const p = r.pressure
  const configuredBroker = (env.BUS_BROKER?.trim() || undefined) as BrokerName | undefined
  const broker = configuredBroker ?? brokerInUse ?? "nats"
  const rate = `${p.notifyingCommitsPerSecond} notifying commits/s`
  const share = `${Math.round(p.thresholdRatio * 100)}% of notifyRateThreshold ${p.threshold}/s`
  if (p.notifyCommitLockWaits > 0) {
    return {
      transport: broker,
      level: "act",
      reason: `${p.notifyCommitLockWaits} backend(s) wait on NOTIFY's commit lock: notifying commits already queue (${rate}, ${share}); flip to ${broker} (docs/flip.md)`,
    }
  }
  if (p.level === "over-threshold") {
    return {
      transport: broker,
      level: "act",
      reason: `${rate} is ${share}: flip to ${broker} (docs/flip.md)`,
    }
  }
  if (p.level === "near-threshold") {
    return {
      transport: broker,
      level: "plan",
      reason: `${rate} is ${share}: plan the flip to ${broker} before NOTIFY's commit lock serialises writes (docs/flip.md)`,
    }
  }
  if (
    r.notify.state === "degraded" &&
    r.notify.silentListeners > 0 &&
    !/self-probe/.test(r.notify.reason ?? "")
  ) {
    return {
      transport: "postgres-notify",
      level: "check",
      reason: r.notify.reason ?? "silent LISTEN backends",
    }
  }
  if (r.notify.state === "degraded") {
    return {
      transport: "postgres-notify",
      level: "check",
      reason: `LISTEN/NOTIFY is degraded (${r.notify.reason ?? "the self-probe got no answer"}): postgres-notify falls back to polling; point the listener at the primary without a transaction-mode pooler`,
    }
  }
  const onBroker = brokerInUse !== undefined
  return {
    transport: "postgres-notify",
    level: "ok",
    reason: onBroker
      ? `${rate} is ${share}: postgres-notify would carry it; flipping back is optional (docs/flip.md)`
      : `${rate} is ${share}: postgres-notify has headroom`,
  }
}

/** The report as the human table. */
export const formatStatus = (r: StatusReport, s: Styles): string => {
  const out: Array<string> = []
  const section = (title: string, rows: ReadonlyArray<readonly [string, string]>) => {
    out.push(s.bold(title))
    out.push(
      table(rows.map(([k, v]) => [`  ${k}`, v]))
        .split("\n")
        .join("\n"),
    )
  }
  const ago = (at: string | undefined) =>
    at === undefined ? "–" : `${duration(Date.now() - Date.parse(at))} ago`
  out.push(
    `${s.bold("@bus status")}  ${r.database.url}  ${s.dim(`schema ${r.schema.name} v${r.schema.version} · Postgres ${r.database.serverVersion}`)}`,
    "",
  )
  const configured =
    "error" in r.transport.configured
      ? s.red(`invalid: ${r.transport.configured.error}`)
      : `${s.bold(r.transport.configured.transport)} ${s.dim(`(${r.transport.configured.reason})`)}`
  const running =
    r.transport.running.length === 0
      ? s.dim("no bus connected (connections are named after their transport by postgresOutbox())")
      : r.transport.running
          .map((t) =>
            t.transport === "unnamed"
              ? `${t.connections} connection(s) of a store built without postgresOutbox() ${s.dim("(transport not named)")}`
              : `${s.bold(t.transport)}: ${t.connections} connection(s)`,
          )
          .join(" · ")
  const mixed = new Set(r.transport.running.map((t) => t.transport).filter((t) => t !== "unnamed")).size > 1
  section("transport", [
    ["configured here (BUS_*)", configured],
    ["running", mixed ? `${running}  ${s.yellow("⚠ processes on different transports")}` : running],
    ["LISTEN connections", String(r.transport.listeners)],
  ])
  out.push("")
  const p = r.pressure
  const levelText =
    p.level === "ok"
      ? s.green("ok")
      : p.level === "near-threshold"
        ? s.yellow("near the threshold")
        : s.red("over the threshold")
  const probe =
    r.notify.state === "healthy"
      ? s.green("healthy")
      : r.notify.state === "degraded"
        ? `${s.red("degraded")} ${s.dim(r.notify.reason ?? "")}`
        : s.yellow(r.notify.state)
  section("notify", [
    ["self-probe", `${probe} ${s.dim(`(${duration(r.notify.probeMs)})`)}`],
    [
      "notifying commits/s",
      `${p.notifyingCommitsPerSecond} ${s.dim(`over the last ${p.windowSeconds} s, ${p.eventsPerSecond} events/s`)}`,
    ],
    ["threshold", `${p.threshold}/s · ${Math.round(p.thresholdRatio * 100)}% · ${levelText}`],
    [
      "database commits/s",
      p.databaseCommitsPerSecond === undefined ? "–" : String(p.databaseCommitsPerSecond),
    ],
    [
      "notify-lock waits",
      `${p.notifyCommitLockWaits === 0 ? "0" : s.red(String(p.notifyCommitLockWaits))} on the commit lock · ${p.notifyQueueWaits} on the queue`,
    ],
    ["queue usage", `${(p.notificationQueueUsage * 100).toFixed(2)}%`],
  ])
  out.push("")
  const o = r.outbox
  section("outbox", [
    ["events", `≈ ${count(o.rowsEstimate)} ${s.dim(`(oldest ${o.oldestEventAt ?? "–"})`)}`],
    [
      "not forwarded",
      o.relayLagMs === undefined
        ? s.dim(
            `${o.unforwardedCapped ? "> " : ""}${count(o.unforwarded)} (no relay on postgres-notify; a broker would get these)`,
          )
        : `${o.unforwardedCapped ? "> " : ""}${count(o.unforwarded)}`,
    ],
    [
      "relay lag",
      o.relayLagMs === undefined
        ? s.dim("– (no broker in use: postgres-notify reads the outbox itself)")
        : duration(o.relayLagMs),
    ],
  ])
  out.push("")
  out.push(s.bold("relay partitions"))
  const rp = r.relay
  const heldBy = new Map<string, number>()
  let lapsed = 0
  for (const p of rp.partitions) {
    if (p.held && p.owner !== undefined) heldBy.set(p.owner, (heldBy.get(p.owner) ?? 0) + 1)
    else if (p.owner !== undefined) lapsed++
  }
  const free = rp.partitions.length - lapsed - [...heldBy.values()].reduce((a, b) => a + b, 0)
  const summary = [...heldBy].map(([owner, n]) => `${n} held by ${owner}`)
  // A lease that ran out under an owner: that relay stopped renewing (died or stalled) and a
  // live relay takes the partition over; until then its rows wait.
  if (lapsed > 0) summary.push(s.yellow(`${lapsed} with a lease that ran out`))
  if (free > 0) summary.push(heldBy.size === 0 ? s.dim(`${free} free`) : s.yellow(`${free} free`))
  out.push(`  ${rp.partitions.length} partitions · ${rp.live} live relay(s) · ${summary.join(" · ")}`)
  // One line per partition once any relay ever held one (postgres-notify alone runs none).
  if (heldBy.size > 0 || lapsed > 0) {
    out.push(
      table(
        rp.partitions.map((p) => [
          `  ${p.partition}`,
          p.owner ?? s.dim("none"),
          p.held
            ? `lease ${duration(Math.max(0, Date.parse(p.leaseUntil!) - Date.now()))} left`
            : p.owner !== undefined
              ? s.yellow(`lease ran out ${ago(p.leaseUntil)}`)
              : s.dim("free"),
          `claimed or position stored ${ago(p.updatedAt)}`,
        ]),
      ),
    )
  }
  out.push("")
  const d = r.deadLetters
  const dead: Array<readonly [string, string]> = [
    [
      "outbox",
      `${d.outbox === 0 ? "0" : s.yellow(String(d.outbox))}${d.outbox > 0 ? s.dim(` (last ${ago(d.lastAt)}; ${d.bySource.map((b) => `${b.source} ${b.count}`).join(", ")})`) : ""}`,
    ],
  ]
  if (d.broker !== undefined) {
    dead.push([
      d.broker.transport,
      d.broker.count !== undefined ? String(d.broker.count) : s.red(`unknown: ${d.broker.error ?? ""}`),
    ])
  }
  section("dead letters", dead)
  out.push("")
  out.push(s.bold("consumer groups"))
  if (r.groups.length === 0) out.push(s.dim("  none yet"))
  else {
    out.push(
      table(
        r.groups.map((g) => [
          `  ${g.tenant}/${g.channel}`,
          g.group,
          g.position === "outbox"
            ? g.held
              ? "outbox position, held"
              : "outbox position"
            : s.dim("broker only"),
          `last commit ${ago(g.lastCommitAt)}`,
          `${g.handledLastMinute} handled in the last minute`,
        ]),
      ),
    )
  }
  out.push("")
  const rec = r.recommendation
  const colour =
    rec.level === "ok" ? s.green : rec.level === "plan" || rec.level === "check" ? s.yellow : s.red
  out.push(`${s.bold("recommended:")} ${colour(rec.transport)}  ${rec.reason}`)
  return out.join("\n")
}
