import { redactUrl } from "../net/redactUrl.js"
import type { ServerProcess } from "../process/serverProcess.js"
import { removeTempDir } from "../process/tempDir.js"
import type { ServerHandle } from "./types.js"

/**
 * The `ServerHandle` of a server this process runs. `stop()` is final: afterwards the data is gone,
 * so the fault-injection calls refuse instead of silently starting an empty server.
 */
export function controllableHandle(url: string, server: ServerProcess, tempDir: string): ServerHandle {
  let stopping: Promise<void> | undefined
  const live = <T>(operation: string, action: () => Promise<T>): Promise<T> =>
    stopping === undefined
      ? action()
      : Promise.reject(
          new Error(`cannot ${operation} ${redactUrl(url)}: the server was stopped and its data removed`),
        )
  const stop = (): Promise<void> => {
    stopping ??= server.shutdown().finally(() => removeTempDir(tempDir))
    return stopping
  }
  return {
    url,
    controllable: true,
    pid: () => (stopping === undefined ? server.pid : undefined),
    stop,
    restart: () => live("restart", () => server.restart()),
    kill: () => live("kill", () => server.kill()),
    pause: () => live("pause", () => server.pause()),
    resume: () => live("resume", () => server.resume()),
    [Symbol.asyncDispose]: stop,
  }
}
