import { existsSync, rmSync } from "node:fs"
import { readOwnerRecords } from "./runDir.js"
import { isSameProcessAlive } from "./table.js"
import { killTreeSync } from "./tree.js"

/** A server process some owner left running. */
export interface Leftover {
  readonly pid: number
  readonly command: string
  /** The process that started it (a test worker), and whether that one was still alive. */
  readonly ownerPid: number
  readonly ownerAlive: boolean
}

/** What `reapLeftovers` found and removed. */
export interface ReapReport {
  readonly processes: readonly Leftover[]
  readonly tempDirs: readonly string[]
}

/**
 * Kills every server process recorded in `runDir` that still runs and removes every recorded temp
 * directory that still exists. Owners that exited cleanly have deleted their records, so whatever
 * is found belongs to a worker that crashed (SIGKILL, OOM) or never stopped its servers.
 */
export function reapLeftovers(runDir: string): ReapReport {
  const processes: Leftover[] = []
  const tempDirs: string[] = []
  for (const { file, record } of readOwnerRecords(runDir)) {
    const ownerAlive = isSameProcessAlive(record.ownerPid, undefined)
    for (const recorded of record.processes) {
      if (!isSameProcessAlive(recorded.pid, recorded.startTime)) continue
      killTreeSync(recorded.pid, 5_000)
      processes.push({ pid: recorded.pid, command: recorded.command, ownerPid: record.ownerPid, ownerAlive })
    }
    for (const dir of record.tempDirs) {
      if (!existsSync(dir)) continue
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
      tempDirs.push(dir)
    }
    rmSync(file, { force: true })
  }
  return { processes, tempDirs }
}

/** A human-readable account of a reap, or undefined when nothing was left behind. */
export function describeReap(report: ReapReport): string | undefined {
  if (report.processes.length === 0 && report.tempDirs.length === 0) return undefined
  const lines = [
    `@bus/test-infra: cleaned up after test workers that did not stop their servers ` +
      `(${report.processes.length} process(es), ${report.tempDirs.length} temp dir(s)):`,
    ...report.processes.map(
      (leftover) =>
        `  killed pid ${leftover.pid} (started by pid ${leftover.ownerPid}` +
        `${leftover.ownerAlive ? ", still alive" : ", gone"}): ${leftover.command}`,
    ),
    ...report.tempDirs.map((dir) => `  removed ${dir}`),
  ]
  return lines.join("\n")
}
