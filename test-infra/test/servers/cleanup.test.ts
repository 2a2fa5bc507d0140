import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { basename, join } from "node:path"
import { fileURLToPath } from "node:url"
import { afterEach, describe, expect, it, vi } from "vitest"
import setupTestRun from "../../src/process/globalSetup.js"
import { type OwnerRecord, RUN_DIR_ENV, readOwnerRecords } from "../../src/process/runDir.js"
import { isSameProcessAlive, type ProcessEntry, processTree } from "../../src/process/table.js"
import { killTreeSync } from "../../src/process/tree.js"

const FIXTURE = fileURLToPath(new URL("./fixtures/start-servers.mjs", import.meta.url))

interface Started {
  readonly child: ChildProcess
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  readonly stdout: () => string
  readonly stderr: () => string
  /** What the child recorded in its run directory once its servers were up. */
  readonly record: OwnerRecord
  /** Every server process, including what the servers forked (Postgres backends). */
  readonly processes: readonly ProcessEntry[]
}

const children: ChildProcess[] = []
const dirs: string[] = []

afterEach(() => {
  // Whatever a failed assertion left behind must not outlive the test.
  for (const child of children.splice(0)) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null)
      killTreeSync(child.pid, 5_000)
  }
  for (const dir of dirs.splice(0)) {
    for (const { record } of readOwnerRecords(dir)) {
      for (const recorded of record.processes) killTreeSync(recorded.pid, 5_000)
      for (const tempDir of record.tempDirs) rmSync(tempDir, { recursive: true, force: true })
    }
    rmSync(dir, { recursive: true, force: true })
  }
})

function newRunDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "bus-test-cleanup-run-"))
  dirs.push(dir)
  return dir
}

/** Starts the fixture and waits until its three servers are up and recorded. */
async function startChild(mode: string, runDir: string): Promise<Started> {
  const child = spawn(process.execPath, [FIXTURE, mode], {
    env: { ...process.env, [RUN_DIR_ENV]: runDir },
    stdio: ["pipe", "pipe", "pipe"],
  })
  children.push(child)
  let stdout = ""
  let stderr = ""
  child.stdout?.on("data", (chunk: Buffer) => {
    stdout += chunk.toString()
  })
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  )
  await vi.waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`fixture exited early: ${stderr}`)
      if (!stdout.includes("ready")) throw new Error("not ready yet")
    },
    { timeout: 60_000, interval: 50 },
  )
  const records = readOwnerRecords(runDir)
  expect(records).toHaveLength(1)
  const record = (records[0] as { record: OwnerRecord }).record
  expect(record.ownerPid).toBe(child.pid)
  expect(record.processes).toHaveLength(3)
  // One temp dir per server, plus, when the checkout is not readable by the Postgres OS user
  // (a clone under a 0700 directory), the one copy of the Postgres binaries: all must go.
  const binaryCopies = record.tempDirs.filter((dir) =>
    basename(dir).startsWith("bus-test-postgres-binaries-"),
  )
  expect(binaryCopies.length).toBeLessThanOrEqual(1)
  expect(record.tempDirs.length - binaryCopies.length).toBe(3)
  const processes = record.processes.flatMap((recorded) => processTree(recorded.pid))
  // Postgres alone runs a handful of processes; seeing them proves the check below is not vacuous.
  expect(processes.length).toBeGreaterThan(5)
  return { child, exited, stdout: () => stdout, stderr: () => stderr, record, processes }
}

function survivors(started: Started): string[] {
  return [
    ...started.processes
      .filter((entry) => isSameProcessAlive(entry.pid, entry.startTime))
      .map((entry) => `pid ${entry.pid}`),
    ...started.record.tempDirs.filter((dir) => existsSync(dir)),
  ]
}

describe("no server process or temp dir outlives the process that started it", () => {
  it("when it stops its servers", async () => {
    const runDir = newRunDir()
    const started = await startChild("stop", runDir)
    started.child.stdin?.write("go\n")
    expect(await started.exited).toEqual({ code: 0, signal: null })
    expect(started.stdout()).toContain("stopped")
    expect(survivors(started)).toEqual([])
    expect(readOwnerRecords(runDir)).toEqual([])
  })

  it("when it dies of an uncaught exception", async () => {
    const runDir = newRunDir()
    const started = await startChild("throw", runDir)
    started.child.stdin?.write("go\n")
    expect(await started.exited).toEqual({ code: 1, signal: null })
    expect(started.stderr()).toContain("boom: uncaught in the middle of a test")
    expect(survivors(started)).toEqual([])
    expect(readOwnerRecords(runDir)).toEqual([])
  })

  it("when it receives SIGTERM, and it still dies of that signal", async () => {
    const runDir = newRunDir()
    const started = await startChild("signal", runDir)
    started.child.stdin?.write("go\n")
    started.child.kill("SIGTERM")
    expect(await started.exited).toEqual({ code: null, signal: "SIGTERM" })
    expect(survivors(started)).toEqual([])
    expect(readOwnerRecords(runDir)).toEqual([])
  })

  it("when it is SIGKILLed: the global setup's teardown kills the leftovers and reports them", async () => {
    const outer = process.env[RUN_DIR_ENV]
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined)
    try {
      const teardown = setupTestRun()
      const runDir = process.env[RUN_DIR_ENV] as string
      expect(runDir).not.toBe(outer)
      dirs.push(runDir)
      const started = await startChild("crash", runDir)
      started.child.kill("SIGKILL")
      expect(await started.exited).toEqual({ code: null, signal: "SIGKILL" })
      // Nothing in a SIGKILLed process runs, so its servers live on: that is what the teardown is for.
      expect(survivors(started).length).toBeGreaterThan(0)

      await teardown()
      expect(survivors(started)).toEqual([])
      expect(existsSync(runDir)).toBe(false)
      expect(process.env[RUN_DIR_ENV]).toBe(outer)
      const report = warn.mock.calls.map((call) => String(call[0])).join("\n")
      // Every recorded leftover is reported: 3 servers, and their temp dirs (see startChild).
      expect(report).toContain(`3 process(es), ${started.record.tempDirs.length} temp dir(s)`)
      for (const recorded of started.record.processes) {
        expect(report).toContain(`killed pid ${recorded.pid} (started by pid ${started.child.pid}, gone)`)
      }
    } finally {
      warn.mockRestore()
      if (outer === undefined) delete process.env[RUN_DIR_ENV]
      else process.env[RUN_DIR_ENV] = outer
    }
  })
})
