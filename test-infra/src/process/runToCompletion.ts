import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, openSync } from "node:fs"
import { readLogTail } from "./logTail.js"
import type { OsUser } from "./osUser.js"
import { trackProcess, untrackProcess } from "./registry.js"
import { ServerStartError } from "./serverStartError.js"

/** Runs a setup program (initdb) to completion, logging to `logFile`; rejects with the log tail on failure. */
export function runToCompletion(
  command: string,
  args: readonly string[],
  options: { readonly logFile: string; readonly runAs?: OsUser; readonly env?: NodeJS.ProcessEnv },
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const log = openSync(options.logFile, "a")
    let child: ChildProcess
    try {
      child = spawn(command, args, {
        // Tracked like a server, so a crash of this process during setup does not leave it running.
        detached: true,
        stdio: ["ignore", log, log],
        env: options.env ?? process.env,
        uid: options.runAs?.uid,
        gid: options.runAs?.gid,
      })
    } finally {
      closeSync(log)
    }
    const pid = child.pid
    if (pid !== undefined) trackProcess(pid, `${command} ${args.join(" ")}`)
    child.once("error", (error) => {
      reject(new ServerStartError(`could not run ${command}: ${error.message}`, readLogTail(options.logFile)))
    })
    child.once("exit", (code, signal) => {
      if (pid !== undefined) untrackProcess(pid)
      if (code === 0) resolve()
      else
        reject(
          new ServerStartError(
            `${command} failed (${signal ?? `code ${code}`})`,
            readLogTail(options.logFile),
          ),
        )
    })
  })
}
