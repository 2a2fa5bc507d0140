import { randomBytes } from "node:crypto"
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"

/**
 * Environment variable naming the directory where every process that starts servers records what it
 * spawned. The vitest global setup sets it, so its teardown can find what crashed workers left behind.
 */
export const RUN_DIR_ENV = "BUS_TEST_INFRA_RUN_DIR"

/** A spawned server process as recorded on disk. */
export interface RecordedProcess {
  readonly pid: number
  /** What was started, for the leftover report. */
  readonly command: string
  /** From /proc, so a reaper never kills an unrelated process that later got the same pid. */
  readonly startTime?: string
}

/** Everything one (worker) process currently owns. */
export interface OwnerRecord {
  readonly ownerPid: number
  readonly processes: readonly RecordedProcess[]
  readonly tempDirs: readonly string[]
}

const RECORD_PREFIX = "owner-"

/**
 * A file name per owner and module instance: two copies of this package loaded into one process
 * (source and built) each keep their own registry and must not overwrite each other's record.
 */
export function ownerRecordPath(runDir: string): string {
  return join(runDir, `${RECORD_PREFIX}${process.pid}-${randomBytes(4).toString("hex")}.json`)
}

/** Writes atomically (temp file + rename) so a reaper never reads half a record; empty records are deleted. */
export function writeOwnerRecord(file: string, record: OwnerRecord): void {
  if (record.processes.length === 0 && record.tempDirs.length === 0) {
    rmSync(file, { force: true })
    return
  }
  const staging = `${file}.tmp`
  writeFileSync(staging, JSON.stringify(record))
  renameSync(staging, file)
}

/** Every owner record in the run directory, each with the file it came from. */
export function readOwnerRecords(
  runDir: string,
): Array<{ readonly file: string; readonly record: OwnerRecord }> {
  let names: string[]
  try {
    names = readdirSync(runDir)
  } catch {
    return []
  }
  const records: Array<{ file: string; record: OwnerRecord }> = []
  for (const name of names) {
    if (!name.startsWith(RECORD_PREFIX) || !name.endsWith(".json")) continue
    const file = join(runDir, name)
    try {
      records.push({ file, record: JSON.parse(readFileSync(file, "utf8")) as OwnerRecord })
    } catch {
      // A record that vanished or cannot be parsed belongs to an owner that cleaned up meanwhile.
    }
  }
  return records
}
