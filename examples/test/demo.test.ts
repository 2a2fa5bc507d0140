import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

/**
 * `pnpm demo` as a user runs it: a child process with `--duration`, checked for what it
 * prints, its exit status, and that every server it started is gone afterwards.
 */

const root = fileURLToPath(new URL("..", import.meta.url))

interface Run {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  /** Server processes and temp directories test-infra recorded while the dashboard was up. */
  readonly recorded: { pids: number[]; dirs: string[] }
  /** Whatever `whileUp` returned. */
  readonly probe: unknown
}

const runDemo = (
  args: ReadonlyArray<string>,
  whileUp?: (url: string) => Promise<unknown>,
  timeoutMs = 90_000,
): Promise<Run> => {
  // test-infra records every server it starts in this directory (and removes the record when
  // the server is stopped): the way to see what the child started, and whether it is gone.
  const runDir = mkdtempSync(join(tmpdir(), "bus-demo-test-"))
  // BUS_* selection variables would change the transport the default run picks.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !/^BUS_(TRANSPORT|NOTIFY_RATE|NOTIFY_RATE_THRESHOLD|BROKER)$/.test(k),
    ),
  )
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "src/demo.ts", ...args], {
    cwd: root,
    env: { ...env, BUS_TEST_INFRA_RUN_DIR: runDir },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let stdout = ""
  let stderr = ""
  const recorded = { pids: [] as number[], dirs: [] as string[] }
  let probe: Promise<unknown> | undefined
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout += chunk.toString()
    const url = /Dashboard: (http:\/\/\S+)/.exec(stdout)?.[1]
    if (url && probe === undefined) {
      for (const name of readdirSync(runDir).filter((n) => n.startsWith("owner-") && n.endsWith(".json"))) {
        const record = JSON.parse(readFileSync(join(runDir, name), "utf8")) as {
          processes: Array<{ pid: number }>
          tempDirs: string[]
        }
        recorded.pids.push(...record.processes.map((p) => p.pid))
        recorded.dirs.push(...record.tempDirs)
      }
      probe = whileUp ? whileUp(url).catch((error: unknown) => error) : Promise.resolve(undefined)
    }
  })
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  return new Promise<Run>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`the demo did not exit within ${timeoutMs} ms\n${stdout}\n${stderr}`))
    }, timeoutMs)
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      const leftover = readdirSync(runDir).filter((n) => n.startsWith("owner-"))
      rmSync(runDir, { recursive: true, force: true })
      if (leftover.length > 0) {
        reject(
          new Error(`test-infra still records servers of the demo after it exited: ${leftover.join(", ")}`),
        )
        return
      }
      Promise.resolve(probe).then(
        (p) => resolve({ code, signal, stdout, stderr, recorded, probe: p }),
        reject,
      )
    })
  })
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const portOpen = (url: string) =>
  new Promise<boolean>((resolve) => {
    const { hostname, port } = new URL(url)
    const socket = connect({ host: hostname, port: Number(port) })
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

/** Processes whose command line mentions `text` (a server's data directory). */
const processesMentioning = (text: string): string[] => {
  const out = spawnSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" }).stdout ?? ""
  return out.split("\n").filter((line) => line.includes(text))
}

const expectNothingLeft = async (run: Run, url: string) => {
  expect(run.recorded.pids.length, "servers recorded while the demo ran").toBeGreaterThan(0)
  for (const pid of run.recorded.pids) expect(alive(pid), `server process ${pid} still running`).toBe(false)
  for (const dir of run.recorded.dirs) {
    expect(existsSync(dir), `temp dir ${dir} left behind`).toBe(false)
    expect(processesMentioning(dir), `processes using ${dir}`).toEqual([])
  }
  expect(await portOpen(url), "dashboard port still open").toBe(false)
  expect(run.stderr).not.toContain("did not exit by itself")
}

/** Opens a dashboard session, then reads the SSE stream until `count` events arrived. */
const readEvents = async (url: string, count: number) => {
  const page = await fetch(url)
  const cookie = page.headers.get("set-cookie")?.split(";")[0] ?? ""
  const snapshot = (await (await fetch(new URL("api/snapshot", url))).json()) as { lastEventId: string }
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), 20_000)
  try {
    const response = await fetch(
      new URL(
        `events?channel=runs&channel=jobs&channel=alerts&lastEventId=${encodeURIComponent(snapshot.lastEventId)}`,
        url,
      ),
      { headers: { cookie }, signal: controller.signal },
    )
    const types: string[] = []
    const decoder = new TextDecoder()
    let buffer = ""
    for await (const chunk of response.body!) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true })
      for (let i = buffer.indexOf("\n\n"); i >= 0; i = buffer.indexOf("\n\n")) {
        const frame = buffer.slice(0, i)
        buffer = buffer.slice(i + 2)
        const data = frame
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim())
          .join("\n")
        if (data) types.push((JSON.parse(data) as { type: string }).type)
      }
      if (types.length >= count) break
    }
    return { status: response.status, types }
  } finally {
    clearTimeout(timer)
    controller.abort()
  }
}

describe("pnpm demo", () => {
  it("serves the dashboard for --duration, prints the URL and a line per second, and exits 0 leaving nothing running", async () => {
    const run = await runDemo(
      ["--duration", "6", "--port", "0", "--kill-listener-every", "3"],
      async (url) => {
        const page = await fetch(url)
        const html = await page.text()
        const unauthorized = await fetch(new URL("events", url))
        return { status: page.status, html, eventsWithoutSession: unauthorized.status }
      },
    )
    expect(run.stderr).not.toMatch(/error/i)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    const url = /Dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(run.stdout)?.[1]
    expect(url, run.stdout).toBeDefined()
    expect(run.stdout).toContain('outbox schema "bus"')
    expect(run.stdout).toContain(
      "bus: using postgres-notify (auto: notifyRate 10/s is below notifyRateThreshold",
    )
    const progress = run.stdout.match(
      /^\[\s*\d+s\] [\d.]+ events\/s · latency p50 .+ · [\d,]+ (queries|tx)\/min .+ subscribers? · .+$/gm,
    )
    expect(progress?.length ?? 0, run.stdout).toBeGreaterThanOrEqual(4)
    expect(run.stdout).toMatch(/killed the bus listener connection .*: 1 backend/)
    expect(run.stdout).toMatch(/listener reconnected \d+ ms after the kill/)
    expect(run.stdout).toMatch(/stopped cleanly: \d+ events in \d+ transactions/)
    const probe = run.probe as { status: number; html: string; eventsWithoutSession: number }
    expect(probe.status).toBe(200)
    expect(probe.html).toContain("Agent pipeline")
    // The SSE endpoint's authorize hook refuses a request without a dashboard session.
    expect(probe.eventsWithoutSession).toBe(401)
    await expectNothingLeft(run, url!)
  })

  it("refuses an unknown transport with a clear message and starts nothing", async () => {
    const run = await runDemo(["--transport", "kafka"], undefined, 30_000)
    expect(run.code).toBe(2)
    expect(run.stderr).toContain("--transport must be one of postgres-notify, nats, redis-streams")
    expect(run.recorded.pids).toEqual([])
  })

  for (const transport of ["redis-streams", "nats"] as const) {
    const binary = transport === "nats" ? "nats-server" : "redis-server"
    const installed = ["/usr/bin", "/usr/sbin", "/usr/local/bin"].some((d) => existsSync(join(d, binary)))
    it.runIf(installed)(
      `--transport ${transport} delivers the pipeline's events to an SSE client`,
      async () => {
        const run = await runDemo(["--transport", transport, "--duration", "5", "--port", "0"], (url) =>
          readEvents(url, 5),
        )
        expect(run.code, run.stdout + run.stderr).toBe(0)
        expect(run.stdout).toContain(`bus: using ${transport} (transport is set to ${transport})`)
        const probe = run.probe as { status: number; types: string[] } | Error
        if (probe instanceof Error) throw probe
        expect(probe.status).toBe(200)
        expect(probe.types.length).toBeGreaterThanOrEqual(5)
        expect(probe.types.every((t) => /^(run|job|alert)\./.test(t))).toBe(true)
        await expectNothingLeft(run, /Dashboard: (\S+)/.exec(run.stdout)![1]!)
      },
    )
  }
})
