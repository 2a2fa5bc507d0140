/**
 * `pnpm demo`: the live demo. Starts a real Postgres (embedded, nothing to install),
 * applies the outbox schema and runs a small agent-pipeline application: a simulated
 * producer moves pipeline runs and their agent jobs through their states in database
 * transactions, publishing each change with the bus, and a web dashboard shows them live
 * over Server-Sent Events. Prints the URL and one line per second.
 *
 *   pnpm demo [--port 3000] [--transport postgres-notify|nats|redis-streams]
 *             [--kill-listener-every <s>] [--duration <s>] [--rate <tx/s>]
 *
 * Ctrl-C stops everything it started: HTTP server, producer, bus, broker, Postgres.
 */
import { parseArgs } from "node:util"
import { type Demo, type DemoStats, startDemo } from "./dashboard/app.js"
import { DemoSetupError, type DemoTransport, demoTransports } from "./dashboard/transports.js"

const usage = `usage: pnpm demo [options]

  --port <n>                  HTTP port (default 3000, or the next free one; 0 = any free port)
  --transport <name>          postgres-notify | nats | redis-streams (default: auto, which picks
                              postgres-notify at this rate; BUS_TRANSPORT=... works too)
  --kill-listener-every <s>   pg_terminate_backend the bus's LISTEN connection every <s> seconds
  --duration <s>              stop after <s> seconds (default: run until Ctrl-C)
  --rate <n>                  most producer transactions per second (default 10)
  --help                      this text`

class UsageError extends Error {}

const positive = (name: string, raw: string | undefined, integer = false): number | undefined => {
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `--${name} must be a ${integer ? "whole " : ""}number ≥ 0, got ${JSON.stringify(raw)}`,
    )
  }
  return n
}

const parse = (argv: ReadonlyArray<string>) => {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      port: { type: "string" },
      transport: { type: "string" },
      "kill-listener-every": { type: "string" },
      duration: { type: "string" },
      rate: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  })
  const transport = values.transport
  if (transport !== undefined && !demoTransports.includes(transport as DemoTransport)) {
    throw new UsageError(
      `--transport must be one of ${demoTransports.join(", ")}, got ${JSON.stringify(transport)}`,
    )
  }
  const port = positive("port", values.port, true)
  if (port !== undefined && port > 65535) throw new UsageError("--port must be at most 65535")
  const rate = positive("rate", values.rate)
  if (rate === 0) throw new UsageError("--rate must be above 0")
  return {
    help: values.help === true,
    port,
    transport: transport as DemoTransport | undefined,
    killListenerEverySeconds: positive("kill-listener-every", values["kill-listener-every"]),
    durationSeconds: positive("duration", values.duration),
    rate,
  }
}

const ms = (n: number | undefined) => (n === undefined ? "–" : `${Math.round(n)} ms`)

/** The one line per second. */
const line = (s: DemoStats): string => {
  const latency =
    s.delivery.browser.count > 0
      ? `latency p50 ${ms(s.delivery.browser.p50)} (browser)`
      : `latency p50 ${ms(s.delivery.server.p50)} (to SSE)`
  const q = s.queries
  const queries =
    q.method === "pg_stat_statements"
      ? `${q.perMinute.toLocaleString("en-US")} queries/min (bus ${q.breakdown?.bus.toLocaleString("en-US") ?? "–"})`
      : `${q.perMinute.toLocaleString("en-US")} tx/min`
  const listener = s.listener.connected ? `listener ${s.listener.notify}` : "listener RECONNECTING"
  return (
    `[${String(s.uptimeSeconds).padStart(4)}s] ${s.producer.eventsPerSecond.toFixed(1)} events/s · ${latency} · ` +
    `${queries} · ${s.subscribers} subscriber${s.subscribers === 1 ? "" : "s"} · ${s.producer.activeRuns} runs active` +
    `${s.producer.paused ? " (paused)" : ""} · ${listener}`
  )
}

const main = async (): Promise<number> => {
  let args: ReturnType<typeof parse>
  try {
    args = parse(process.argv.slice(2))
  } catch (error) {
    console.error(`${error instanceof Error ? error.message : String(error)}\n\n${usage}`)
    return 2
  }
  if (args.help) {
    console.log(usage)
    return 0
  }

  // Ctrl-C during start-up: @bus/test-infra's own handler kills the servers started so far.
  const earlyInterrupt = () => {
    console.log("\ninterrupted during start-up")
    process.exit(130)
  }
  for (const s of ["SIGINT", "SIGTERM"] as const) process.on(s, earlyInterrupt)

  let demo: Demo
  try {
    demo = await startDemo({
      ...(args.port !== undefined ? { port: args.port } : {}),
      ...(args.transport !== undefined ? { transport: args.transport } : {}),
      ...(args.killListenerEverySeconds !== undefined
        ? { killListenerEverySeconds: args.killListenerEverySeconds }
        : {}),
      ...(args.rate !== undefined ? { producer: { rate: args.rate } } : {}),
      log: (text) => console.log(`• ${text}`),
    })
  } catch (error) {
    if (error instanceof DemoSetupError) {
      console.error(`✗ ${error.message}`)
      return 1
    }
    throw error
  } finally {
    for (const s of ["SIGINT", "SIGTERM"] as const) process.off(s, earlyInterrupt)
  }

  console.log(`\n  Dashboard: ${demo.url}\n`)
  // The operator's view of the same database, from a second terminal (the URL lives as long as the demo).
  console.log(`  Operators: pnpm bus status --url '${demo.databaseUrl}'`)
  console.log(`             pnpm bus tail demo runs --url '${demo.databaseUrl}'\n`)
  console.log(
    `  Try: the "Kill listener" button (or --kill-listener-every 10), a second browser tab, ` +
      `${args.transport === undefined ? "--transport nats, " : ""}Ctrl-C to stop.\n`,
  )

  const reported = new Set<string>()
  const ticker = setInterval(() => {
    const s = demo.stats()
    console.log(line(s))
    for (const kill of s.listener.kills) {
      if (kill.recoveredAfterMs === undefined || reported.has(kill.at)) continue
      reported.add(kill.at)
      console.log(
        `• listener reconnected ${kill.recoveredAfterMs} ms after the kill and caught up from its cursor`,
      )
    }
  }, 1000)

  let stopping = false
  let signalled: NodeJS.Signals | undefined
  let restoreSignals = () => {}

  const stopped = new Promise<string>((resolve) => {
    const timer =
      args.durationSeconds !== undefined
        ? setTimeout(
            () => resolve(`--duration ${args.durationSeconds} s reached`),
            args.durationSeconds * 1000,
          )
        : undefined
    // @bus/test-infra kills its servers at once on a signal (its safety net). Hold those handlers
    // back while the demo stops in order, and run them afterwards (they find nothing left to kill).
    const deferred = new Map<NodeJS.Signals, Array<(...a: unknown[]) => void>>()
    const onSignal = (signal: NodeJS.Signals) => {
      if (timer) clearTimeout(timer)
      if (stopping) {
        // A second Ctrl-C: stop waiting; the safety net kills what is left.
        for (const [sig, handlers] of deferred) for (const h of handlers) process.on(sig, h)
        process.exit(130)
      }
      resolve(signal === "SIGINT" ? "Ctrl-C" : signal)
      signalled = signal
    }
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      const others = process.listeners(signal) as Array<(...a: unknown[]) => void>
      deferred.set(signal, others)
      for (const h of others) process.off(signal, h)
      process.on(signal, onSignal)
    }
    restoreSignals = () => {
      for (const [signal, handlers] of deferred) {
        process.off(signal, onSignal)
        for (const h of handlers) process.on(signal, h)
      }
    }
  })
  const reason = await stopped
  stopping = true
  clearInterval(ticker)
  console.log(
    `\n• stopping (${reason}): HTTP server, producer, bus, ${demo.transport.transport === "postgres-notify" ? "" : "broker, "}Postgres…`,
  )
  const final = demo.stats()
  await demo.stop()
  restoreSignals()
  console.log(
    `• stopped cleanly: ${final.producer.events.toLocaleString("en-US")} events in ${final.producer.transactions.toLocaleString("en-US")} transactions, ` +
      `${final.delivery.sent.toLocaleString("en-US")} sent over SSE, ${final.listener.kills.length} listener kill(s)`,
  )
  return signalled ? 130 : 0
}

main().then(
  (code) => {
    process.exitCode = code
    // Everything is closed, so the process ends by itself. If something still held it open,
    // say what (a leak is a bug) instead of hanging.
    setTimeout(() => {
      const open = process.getActiveResourcesInfo().filter((r) => r !== "TTYWrap" && r !== "Timeout")
      console.error(`warning: the demo did not exit by itself; still open: ${open.join(", ") || "timers"}`)
      process.exit(code)
    }, 5_000).unref()
  },
  (error) => {
    console.error(error)
    process.exitCode = 1
  },
)
