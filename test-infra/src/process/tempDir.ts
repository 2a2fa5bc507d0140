import { mkdtempSync } from "node:fs"
import { rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { trackTempDir, untrackTempDir } from "./registry.js"

/** Creates a fresh directory under the OS temp dir, removed on every exit path until `removeTempDir`. */
export function createTempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `bus-test-${label}-`))
  trackTempDir(dir)
  return dir
}

/** Removes a directory made by `createTempDir`. */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  untrackTempDir(dir)
}
