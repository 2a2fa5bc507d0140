import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { freePort, retryOnPortClash } from "../../net/freePort.js"
import { assertReachable } from "../../net/tcpProbe.js"
import { findExecutable } from "../../process/findExecutable.js"
import { ServerProcess } from "../../process/serverProcess.js"
import { createTempDir, removeTempDir } from "../../process/tempDir.js"
import { controllableHandle } from "../controllableHandle.js"
import { externalHandle } from "../externalHandle.js"
import { resolveServerMode } from "../serverMode.js"
import type { ServerHandle, StartRedisOptions } from "../types.js"
import { redisAnswersPing } from "./ping.js"

/** Environment variable pointing tests at an existing Redis instead of starting one. */
export const REDIS_URL_ENV = "BUS_REDIS_URL"

/**
 * Starts a throwaway Redis on a free loopback port (no RDB snapshots; append-only file on unless
 * `appendOnly: false`), or returns a non-controllable handle for `BUS_REDIS_URL` when that is set.
 *
 * @throws MissingBinaryError when redis-server is not installed.
 * @throws ServerStartError (with the server's log tail) when it does not come up.
 */
export async function startRedis(options: StartRedisOptions = {}): Promise<ServerHandle> {
  resolveServerMode()
  const external = process.env[REDIS_URL_ENV]
  if (external) {
    await assertReachable(external, REDIS_URL_ENV, 6379)
    return externalHandle(external, REDIS_URL_ENV)
  }
  const binary = findExecutable("redis-server", "apt-get install -y redis-server")
  const dir = createTempDir("redis")
  try {
    const logFile = join(dir, "redis.log")
    writeFileSync(logFile, "")
    const { server, port } = await retryOnPortClash(async () => {
      const port = await freePort()
      const server = new ServerProcess({
        label: `redis-server on 127.0.0.1:${port} (${dir})`,
        command: binary,
        args: [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          // Only loopback is reachable, and tests connect without a password.
          "--protected-mode",
          "no",
          "--save",
          "",
          "--appendonly",
          options.appendOnly === false ? "no" : "yes",
          // "no" still writes every command to the file before replying, so a SIGKILL loses
          // nothing (only a machine crash would); it just leaves fsync to the kernel.
          "--appendfsync",
          "no",
          "--dir",
          dir,
          "--daemonize",
          "no",
          "--logfile",
          "",
        ],
        logFile,
        stopSignal: "SIGTERM",
        isReady: () => redisAnswersPing(port),
      })
      await server.start()
      return { server, port }
    })
    return controllableHandle(`redis://127.0.0.1:${port}`, server, dir)
  } catch (error) {
    await removeTempDir(dir)
    throw error
  }
}
