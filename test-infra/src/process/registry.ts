import { rmSync } from "node:fs"
import { ownerRecordPath, type RecordedProcess, RUN_DIR_ENV, writeOwnerRecord } from "./runDir.js"
import { readProcessEntry } from "./table.js"
import { killTreeSync } from "./tree.js"

/**
 * The one place that knows every server process and temp directory this process created, so that
 * no exit path (normal exit, Ctrl-C, SIGTERM from a runner, an uncaught error) leaves a server
 * running or a data directory on disk.
 */
const processes = new Map<number, RecordedProcess>()
const tempDirs = new Set<string>()
let hooksInstalled = false
let recordFile: string | undefined

const EXIT_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"]

/** Registers a spawned server, to be killed with everything it forked on any exit path. */
export function trackProcess(pid: number, command: string): void {
  installHooks()
  processes.set(pid, { pid, command, startTime: readProcessEntry(pid)?.startTime })
  persist()
}

/** Forgets a server that has exited. */
export function untrackProcess(pid: number): void {
  if (processes.delete(pid)) persist()
}

/** Registers a directory to delete on any exit path. */
export function trackTempDir(dir: string): void {
  installHooks()
  tempDirs.add(dir)
  persist()
}

/** Forgets a directory that has been removed. */
export function untrackTempDir(dir: string): void {
  if (tempDirs.delete(dir)) persist()
}

/**
 * Kills every tracked process tree and removes every tracked directory, synchronously because on
 * `exit` the event loop is already gone. Safe to call more than once.
 */
export function cleanupSync(): void {
  for (const pid of processes.keys()) {
    try {
      killTreeSync(pid, 3_000)
    } catch {
      // Keep going: one stubborn server must not keep the others alive.
    }
  }
  processes.clear()
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
    } catch {
      // Best effort on the way out; the global teardown reports what survives.
    }
  }
  tempDirs.clear()
  persist()
}

function persist(): void {
  const runDir = process.env[RUN_DIR_ENV]
  if (runDir === undefined || runDir === "") return
  recordFile ??= ownerRecordPath(runDir)
  try {
    writeOwnerRecord(recordFile, {
      ownerPid: process.pid,
      processes: [...processes.values()],
      tempDirs: [...tempDirs],
    })
  } catch {
    // The run directory is a safety net for crashed workers; losing it must not fail a test.
  }
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupSync()
  process.off(signal, onSignal)
  // Listening for a signal disables Node's default of dying from it. When nobody else took the
  // signal over, die from it as the sender intended, with the exit status that says so.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
}

function onUncaught(): void {
  // The monitor variant observes the error without handling it. When someone else does handle it
  // (a test runner reporting it and moving on), the process lives on and so must its servers.
  if (process.listenerCount("uncaughtException") === 0) cleanupSync()
}

function installHooks(): void {
  if (hooksInstalled) return
  hooksInstalled = true
  process.on("exit", cleanupSync)
  process.on("uncaughtExceptionMonitor", onUncaught)
  for (const signal of EXIT_SIGNALS) process.on(signal, onSignal)
}
