/**
 * `pnpm bench`: starts Postgres, Redis and NATS through test-infra, runs the scenarios,
 * and writes the JSON results and the markdown report with its charts. Servers are
 * stopped at the end, on an error, and on Ctrl-C.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import os from "node:os"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { CliError, parseArgs, usage } from "./cli.js"
import { BenchEnv } from "./harness/env.js"
import { machineFacts } from "./harness/machine.js"
import { fullProfile, quickProfile } from "./harness/profile.js"
import { Progress } from "./harness/progress.js"
import { ConsoleCapture } from "./harness/sdklog.js"
import type { RunResult, ScenarioResult, TransportId } from "./harness/types.js"
import { ScenarioContext } from "./scenarios/context.js"
import { renderReport } from "./suite/markdown.js"
import { scenarios } from "./suite/scenarios.js"
import { loadBroker, sdkPipe } from "./targets/sdk.js"

const here = dirname(fileURLToPath(import.meta.url))
const benchDir = resolve(here, "..")
const repoDir = resolve(benchDir, "..")

const main = async (): Promise<number> => {
  let cli: ReturnType<typeof parseArgs>
  try {
    cli = parseArgs(process.argv.slice(2))
  } catch (error) {
    if (error instanceof CliError) {
      console.error(error.message)
      return 2
    }
    throw error
  }
  if (cli.help) {
    console.log(usage)
    return 0
  }
  if (cli.render !== undefined) {
    const file = cli.render === "latest" ? latestResults() : resolve(process.cwd(), cli.render)
    const run = JSON.parse(readFileSync(file, "utf8")) as RunResult
    writeDocs(run, new Progress(), file)
    return 0
  }
  const profile = cli.quick ? quickProfile : fullProfile
  const progress = new Progress()
  const startedAt = new Date()
  const t0 = performance.now()
  const loadStart = os.loadavg()
  let aborted = false
  let abortedAt = 0
  const onSigint = () => {
    // A terminal's Ctrl-C reaches both tsx and this process, and tsx relays it: one press
    // can arrive twice. Only a second press a moment later means "quit at once".
    if (aborted) {
      if (performance.now() - abortedAt > 1_000) process.exit(130)
      return
    }
    aborted = true
    abortedAt = performance.now()
    // The servers die under open connections now; whatever a client library throws about
    // that must not end the run before it has written what it measured.
    process.on("uncaughtException", (error) => {
      progress.line(`(ignored while stopping: ${error instanceof Error ? error.message : String(error)})`)
    })
    progress.line(
      "interrupted: stopping the servers and writing what was measured (Ctrl-C again to quit at once)",
    )
    setTimeout(() => process.exit(130), 15_000)
  }
  process.on("SIGINT", onSigint)
  process.on("SIGTERM", onSigint)

  const logFile = join(benchDir, "results", "tmp", `${stamp(startedAt)}-sdk.log`)
  const capture = new ConsoleCapture(logFile)
  capture.start()
  const env = new BenchEnv({ pgFsync: cli.pgFsync, progress })
  const results: ScenarioResult[] = []
  const transportsInfo: Record<string, { available: boolean; reason?: string }> = {}
  const complete = cli.scenarios.length === Object.keys(scenarios).length && cli.transports.length === 4
  progress.line(
    `bench ${profile.name}: scenarios ${cli.scenarios.join(", ")}; transports ${cli.transports.join(", ")}; ${os.cpus().length} cores, load ${loadStart.map((l) => l.toFixed(2)).join(" ")}`,
  )
  try {
    await env.start(cli.transports)
    const serverUnavailable = new Map<TransportId, string>(env.unavailable)
    const unavailable = new Map<TransportId, string>(env.unavailable)
    for (const t of ["nats", "redis-streams"] as const) {
      if (!cli.transports.includes(t) || unavailable.has(t)) continue
      const layer = await loadBroker(t, env)
      if (typeof layer === "string") unavailable.set(t, layer)
    }
    // One event end to end per transport before anything is measured, so a transport that
    // cannot deliver is reported once, with its cause, instead of timing out in every arm.
    for (const t of cli.transports) {
      if (unavailable.has(t)) continue
      progress.status(`probing ${t}: one event end to end`)
      const pipe = sdkPipe(t, env)
      try {
        const session = await pipe.open({
          channel: `probe-${startedAt.getTime().toString(36)}`,
          subscribers: 1,
          payloadBytes: 64,
          onReceive: () => undefined,
          readyTimeoutMs: Math.min(profile.readyTimeoutMs, 15_000),
        })
        await session.close()
      } catch (error) {
        unavailable.set(
          t,
          `the SDK could not deliver one event: ${error instanceof Error ? error.message : String(error)}`,
        )
      } finally {
        await pipe.close().catch(() => undefined)
      }
    }
    for (const t of cli.transports) {
      const reason = unavailable.get(t)
      transportsInfo[t] = reason === undefined ? { available: true } : { available: false, reason }
      if (reason !== undefined) progress.line(`${t}: not available: ${reason}`)
    }
    const runId = startedAt.getTime().toString(36)
    const ctx = new ScenarioContext(
      env,
      profile,
      progress,
      cli.transports,
      unavailable,
      serverUnavailable,
      () => aborted,
      runId,
    )
    for (const id of cli.scenarios) {
      if (aborted) break
      const scenario = scenarios[id]
      progress.heading(`${id}: ${scenario.title}`)
      const s0 = performance.now()
      try {
        const r = await scenario.run(ctx)
        results.push({ ...r, durationMs: performance.now() - s0 })
      } catch (error) {
        const message = error instanceof Error ? (error.stack ?? error.message) : String(error)
        progress.line(`${id} failed: ${message}`)
        results.push({
          id,
          title: scenario.title,
          method: [],
          arms: [],
          blocks: [],
          notes: [],
          durationMs: performance.now() - s0,
          error: message.split("\n")[0] ?? message,
        })
      } finally {
        await ctx.closePipes()
      }
      progress.line(`${id} done in ${((performance.now() - s0) / 1000).toFixed(0)} s`)
    }
  } finally {
    capture.stop()
    if (capture.lines > 0)
      progress.line(
        `the SDK logged ${capture.lines} lines (${capture.warnings} warnings/errors): ${relative(repoDir, logFile)}`,
      )
    progress.status("stopping servers…")
    const machine = machineFacts(env, loadStart)
    await env.stop()
    progress.done()
    const finishedAt = new Date()
    const run: RunResult = {
      schema: "bus-benchmarks/1",
      quick: cli.quick,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      durationMs: performance.now() - t0,
      profile: {
        ...profile,
        pgFsync: cli.pgFsync,
        latencyRates: profile.latency.rates,
        scenarios: cli.scenarios,
        transports: cli.transports,
      },
      machine,
      transports: transportsInfo,
      queryCountMethod: env.queryCountMethod,
      scenarios: results,
      warnings: env.warnings,
      ...(aborted ? { interrupted: true } : {}),
    }
    writeOutputs(run, complete && !aborted, cli.docs, progress)
  }
  progress.line(`done in ${((performance.now() - t0) / 60_000).toFixed(1)} min`)
  return aborted ? 130 : 0
}

const stamp = (d: Date) =>
  d
    .toISOString()
    .replace(/:/g, "")
    .replace(/\.\d+Z$/, "Z")

const resultsDir = join(benchDir, "results")

/**
 * The newest committed run. Each run is one file, `results/<start time>.json`; "latest" is
 * derived from the names (ISO stamps sort by time) rather than kept as a second copy.
 */
const latestResults = (): string => {
  const newest = readdirSync(resultsDir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .at(-1)
  if (newest === undefined) throw new Error(`no results file in ${relative(repoDir, resultsDir)}`)
  return join(resultsDir, newest)
}

/** docs/benchmarks.md and its charts, linking to the run's results file; returns the number of charts. */
const writeDocs = (run: RunResult, progress: Progress, resultFile: string): number => {
  const docsDir = join(repoDir, "docs")
  const chartsDir = join(docsDir, "benchmarks")
  mkdirSync(chartsDir, { recursive: true })
  for (const f of readdirSync(chartsDir)) if (f.endsWith(".svg")) rmSync(join(chartsDir, f))
  const rendered = renderReport(run, {
    chartsPath: "benchmarks",
    jsonPath: relative(docsDir, resultFile),
    command: `pnpm bench${run.quick ? " --quick" : ""}`,
  })
  for (const [file, svg] of Object.entries(rendered.svgs)) writeFileSync(join(chartsDir, file), `${svg}\n`)
  writeFileSync(join(docsDir, "benchmarks.md"), rendered.markdown)
  progress.line(`rendered docs/benchmarks.md with ${Object.keys(rendered.svgs).length} charts`)
  return Object.keys(rendered.svgs).length
}

const writeOutputs = (run: RunResult, complete: boolean, docs: boolean | undefined, progress: Progress) => {
  const json = `${JSON.stringify(run, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`
  const name = `${stamp(new Date(run.startedAt))}${run.quick ? "-quick" : ""}`
  const toDocs = docs ?? complete
  if (toDocs) {
    // Quick runs are smoke tests: their JSON stays out of the committed results.
    const dir = run.quick ? join(resultsDir, "tmp") : resultsDir
    mkdirSync(dir, { recursive: true })
    const resultFile = join(dir, `${name}.json`)
    writeFileSync(resultFile, json)
    const charts = writeDocs(run, progress, resultFile)
    progress.line(`wrote ${relative(repoDir, resultFile)}, docs/benchmarks.md and ${charts} charts`)
  } else {
    const dir = join(benchDir, "results", "tmp", name)
    mkdirSync(join(dir, "charts"), { recursive: true })
    writeFileSync(join(dir, "results.json"), json)
    const rendered = renderReport(run, {
      chartsPath: "charts",
      jsonPath: "results.json",
      command: "pnpm bench (partial run)",
    })
    for (const [file, svg] of Object.entries(rendered.svgs))
      writeFileSync(join(dir, "charts", file), `${svg}\n`)
    writeFileSync(join(dir, "report.md"), rendered.markdown)
    progress.line(
      `partial run: wrote ${relative(repoDir, dir)}/{results.json,report.md,charts/} (docs/ untouched; --docs to overwrite the report)`,
    )
  }
}

main().then(
  (code) => {
    process.exitCode = code
    // Client libraries may keep sockets half-open for a moment; the servers are gone, so do not wait.
    setTimeout(() => process.exit(code), 2_000).unref()
  },
  (error: unknown) => {
    console.error(error)
    process.exitCode = 1
    setTimeout(() => process.exit(1), 2_000).unref()
  },
)
