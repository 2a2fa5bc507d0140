import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describeReap, reapLeftovers } from "./leftoverReaper.js"
import { RUN_DIR_ENV } from "./runDir.js"
import { isSameProcessAlive, readProcessEntry } from "./table.js"

const RUN_DIR_PREFIX = "bus-test-infra-run-"
const RUN_FILE = "run.json"

/**
 * Vitest global setup (`globalSetup: ["@bus/test-infra/global-setup"]`). Gives the test run a
 * directory in which every worker records the servers it spawns, and on teardown kills whatever a
 * crashed or careless worker left running and reports it. It also reaps run directories of earlier
 * runs whose vitest process itself was killed before its teardown.
 *
 * @returns The teardown vitest calls after the run.
 */
export default function setup(): () => Promise<void> {
  reapAbandonedRuns()
  const previous = process.env[RUN_DIR_ENV]
  const runDir = mkdtempSync(join(tmpdir(), RUN_DIR_PREFIX))
  writeFileSync(
    join(runDir, RUN_FILE),
    JSON.stringify({ pid: process.pid, startTime: readProcessEntry(process.pid)?.startTime }),
  )
  // Workers are forked after global setup with a copy of this environment.
  process.env[RUN_DIR_ENV] = runDir
  return async () => {
    const report = describeReap(reapLeftovers(runDir))
    if (report !== undefined) console.warn(report)
    rmSync(runDir, { recursive: true, force: true })
    if (previous === undefined) delete process.env[RUN_DIR_ENV]
    else process.env[RUN_DIR_ENV] = previous
  }
}

function reapAbandonedRuns(): void {
  let names: string[]
  try {
    names = readdirSync(tmpdir()).filter((name) => name.startsWith(RUN_DIR_PREFIX))
  } catch {
    return
  }
  for (const name of names) {
    const runDir = join(tmpdir(), name)
    try {
      const run = JSON.parse(readFileSync(join(runDir, RUN_FILE), "utf8")) as {
        pid: number
        startTime?: string
      }
      if (isSameProcessAlive(run.pid, run.startTime)) continue
    } catch {
      // No readable run file: either being created right now by a concurrent run, or garbage.
      continue
    }
    const report = describeReap(reapLeftovers(runDir))
    if (report !== undefined)
      console.warn(`${report}\n  (from an earlier test run that was killed: ${runDir})`)
    rmSync(runDir, { recursive: true, force: true })
  }
}
