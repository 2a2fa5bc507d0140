import { execFile } from "node:child_process"
import { createRequire } from "node:module"
import { promisify } from "node:util"

const run = promisify(execFile)
const require = createRequire(import.meta.url)

/** This workspace's TypeScript compiler, the same one every package builds with. */
export const tscPath: string = require.resolve("typescript/bin/tsc")

/**
 * Runs `tsc -p <project>` and returns its diagnostics (empty when it compiled). tsc exits
 * non-zero on errors; that is an answer here, not a failure of the run.
 */
export const typecheck = async (project: string): Promise<string> => {
  try {
    // Run from the project so reported paths are relative to it.
    await run(process.execPath, [tscPath, "-p", ".", "--pretty", "false"], {
      cwd: project,
      maxBuffer: 64 * 1024 * 1024,
      timeout: 300_000,
    })
    return ""
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; code?: unknown }
    if (typeof e.code !== "number") throw error
    return `${e.stdout ?? ""}${e.stderr ?? ""}`.trim()
  }
}
