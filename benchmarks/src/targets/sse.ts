import { type ChildProcess, fork } from "node:child_process"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { nodeSseHandler } from "@bus/sse"
import type { CpuMeter } from "../harness/cpu.js"
import { CpuMeter as Cpu } from "../harness/cpu.js"
import type { BenchEnv } from "../harness/env.js"
import { settledHeap } from "../harness/memory.js"
import type { BlockMeasurement, TransportId } from "../harness/types.js"
import { eventData, PRIMER, padFor, sleep, tenant } from "./pipe.js"
import { openSdkBus, type SdkBus } from "./sdk.js"

/**
 * SSE fan-out as a user runs it: one `@bus/sse` endpoint (`nodeSseHandler` over a bus
 * from `createBus`) in this process, and N real SSE clients in a separate OS process
 * (`sse-client.mjs`, spawned with `node`) that open N HTTP connections, parse the
 * event stream and report per-event receive times back over IPC. Latency is from the
 * intended send time to the client's receipt, on `performance.timeOrigin + now()` (one
 * machine clock both processes read).
 */

const clientScript = fileURLToPath(new URL("./sse-client.mjs", import.meta.url))

interface Progress {
  readonly connected: number
  readonly live: number
  readonly closed: number
  readonly firstError?: string
}

interface Report extends Progress {
  readonly clients: number
  readonly received: number
  readonly duplicates: number
  readonly lost: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly p999: number
  readonly max: number
  readonly clientLoopDelayP99: number
  readonly clientLoopDelayMax: number
}

export interface SseFanoutOptions {
  readonly transport: TransportId
  readonly env: BenchEnv
  readonly channel: string
  readonly clients: number
  readonly rate: number
  readonly durationMs: number
  readonly drainMs: number
  readonly payloadBytes: number
  readonly connectTimeoutMs: number
  readonly cpu: CpuMeter
  readonly status: (text: string) => void
}

const absoluteNow = () => performance.timeOrigin + performance.now()

/** One block: connect N clients, prime, send at `rate` for `durationMs`, drain, report. */
export const runSseFanout = async (o: SseFanoutOptions): Promise<BlockMeasurement> => {
  let sdk: SdkBus | undefined
  let server: Server | undefined
  let child: ChildProcess | undefined
  const errors: string[] = []
  try {
    sdk = await openSdkBus({ transport: o.transport, env: o.env })
    const bus = sdk.bus
    const handler = nodeSseHandler(bus, {
      authorize: () => ({ tenant, channels: [o.channel] }),
      channels: [o.channel],
      // A heartbeat per client per 15 s is part of the real load; keep the default.
      onError: (error) => {
        if (errors.length < 5) errors.push(error instanceof Error ? error.message : String(error))
      },
    })
    server = createServer((req, res) => void handler(req, res))
    server.maxConnections = o.clients + 100
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", 8192, resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`

    let progress: Progress = { connected: 0, live: 0, closed: 0 }
    let report: Report | undefined
    let exited: string | undefined
    child = fork(clientScript, [], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv: [] })
    child.on("message", (m: { type: string } & Record<string, unknown>) => {
      if (m.type === "progress") progress = m as unknown as Progress
      else if (m.type === "report") report = m as unknown as Report
    })
    child.on("exit", (code, signal) => {
      exited = `SSE client process exited (${code ?? signal})`
    })

    const pad = padFor(o.payloadBytes)
    const publish = (seqs: readonly number[], t: number) =>
      sdk!.publish(
        seqs.map((s) => ({ tenant, channel: o.channel, type: "bench.event", data: eventData(s, t, pad) })),
      )

    const heap0 = await settledHeap()
    const rss0 = process.memoryUsage().rss
    const t0 = performance.now()
    child.send({ cmd: "connect", url, count: o.clients })
    // Live = every client received a primer event: connected, subscribed and delivering.
    const deadline = t0 + o.connectTimeoutMs
    let lastPrimer = 0
    while (progress.live < o.clients) {
      if (exited !== undefined) throw new Error(exited)
      if (performance.now() > deadline)
        throw new Error(
          `only ${progress.live}/${o.clients} SSE clients live (${progress.connected} connected, ${progress.closed} closed${progress.firstError ? `, first error: ${progress.firstError}` : ""}) after ${o.connectTimeoutMs} ms`,
        )
      // A client counts as live once a primer reached it. Every primer goes to every
      // connected client, so primers wait until all are connected (each one sent while
      // clients are still connecting would cost thousands of deliveries and slow the
      // connecting down). A connected client's position is already fixed: the endpoint
      // fixes "now" before it answers, so a primer committed after the answer reaches it.
      if (
        progress.connected === o.clients &&
        progress.connected > progress.live &&
        performance.now() - lastPrimer > 250
      ) {
        lastPrimer = performance.now()
        await publish([PRIMER], absoluteNow())
      }
      o.status(`SSE clients: ${progress.connected}/${o.clients} connected, ${progress.live} live`)
      await sleep(20)
    }
    const connectMs = performance.now() - t0
    const heap1 = await settledHeap()
    const rss1 = process.memoryUsage().rss

    child.send({ cmd: "measure" })
    await sleep(50)
    const cpuStart = o.cpu.sample()
    const loopDelay = monitorEventLoopDelay({ resolution: 10 })
    loopDelay.enable()
    const total = Math.max(1, Math.round((o.rate * o.durationMs) / 1000))
    const start = performance.now() + 20
    let sent = 0
    let sendErrors = 0
    const pending: Promise<void>[] = []
    let generatorLagMax = 0
    for (let s = 0; s < total; s++) {
      const due = start + (s * 1000) / o.rate
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
      generatorLagMax = Math.max(generatorLagMax, performance.now() - due)
      const intended = performance.timeOrigin + due
      pending.push(
        publish([s], intended).then(
          () => {
            sent++
          },
          () => {
            sendErrors++
          },
        ),
      )
      o.status(`SSE: sent ${s + 1}/${total} to ${o.clients} clients`)
    }
    await Promise.all(pending)
    // Drain: wait until the clients have every event (or the drain time is over).
    const drainUntil = performance.now() + o.drainMs
    for (;;) {
      report = undefined
      child.send({ cmd: "report", expected: sent })
      while (report === undefined && exited === undefined) await sleep(10)
      if (report === undefined) throw new Error(exited)
      const r = report as Report
      if (r.lost === 0 || performance.now() > drainUntil) break
      await sleep(200)
    }
    const cpuEnd = o.cpu.sample()
    loopDelay.disable()
    const r = report as Report
    const deliveries = r.received
    const d = Cpu.delta(cpuStart, cpuEnd)
    const flags: string[] = []
    if (r.lost > 0) flags.push("undelivered")
    if (sendErrors > 0) flags.push("send-errors")
    if (generatorLagMax > 50) flags.push("generator-lag")
    return {
      metrics: {
        subscribers: o.clients,
        rate: o.rate,
        payloadBytes: o.payloadBytes,
        sent,
        sendErrors,
        delivered: deliveries,
        lost: r.lost,
        duplicates: r.duplicates,
        disconnected: r.closed,
        p50: r.p50,
        p90: r.p90,
        p99: r.p99,
        p999: r.p999,
        max: r.max,
        connectMs,
        serverLoopDelayP99: loopDelay.percentile(99) / 1e6,
        serverLoopDelayMax: loopDelay.max / 1e6,
        clientLoopDelayP99: r.clientLoopDelayP99,
        clientLoopDelayMax: r.clientLoopDelayMax,
        heapBytesPerClient: (heap1 - heap0) / o.clients,
        rssBytesPerClient: (rss1 - rss0) / o.clients,
        cpuProcessMs: d.processMs,
        cpuUsPerEvent: deliveries > 0 ? (d.processMs * 1000) / deliveries : Number.NaN,
      },
      flags,
      notes: errors.map((e) => `server error: ${e}`),
    }
  } finally {
    child?.send({ cmd: "close" }, () => undefined)
    if (child !== undefined && child.exitCode === null) {
      const c = child
      await Promise.race([new Promise((resolve) => c.once("exit", resolve)), sleep(3_000)])
      if (c.exitCode === null) c.kill("SIGKILL")
    }
    server?.closeAllConnections()
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)))
    await sdk?.close()
  }
}
