import { accessSync, constants, statSync } from "node:fs"
import { delimiter, join } from "node:path"

/** A server binary the harness needs is not installed; the message names what to install. */
export class MissingBinaryError extends Error {
  override readonly name = "MissingBinaryError"
}

// Debian puts some daemons (nats-server) in sbin, which is not on a normal user's PATH.
const SBIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"]

/** Whether `file` is a regular file this process may execute. */
export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK)
    return statSync(file).isFile()
  } catch {
    return false
  }
}

/**
 * Finds `name` on PATH (then in the sbin directories) or fails at once with `installHint`, instead of
 * letting a spawn fail later with a bare ENOENT.
 */
export function findExecutable(name: string, installHint: string): string {
  const dirs = (process.env.PATH ?? "").split(delimiter).filter((dir) => dir !== "")
  for (const dir of [...dirs, ...SBIN_DIRS]) {
    const candidate = join(dir, name)
    if (isExecutable(candidate)) return candidate
  }
  throw new MissingBinaryError(`${name} not found on PATH: ${installHint}`)
}
