import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { freePorts, retryOnPortClash } from "../../net/freePort.js"
import { assertReachable } from "../../net/tcpProbe.js"
import { findExecutable } from "../../process/findExecutable.js"
import { ServerProcess } from "../../process/serverProcess.js"
import { createTempDir, removeTempDir } from "../../process/tempDir.js"
import { controllableHandle } from "../controllableHandle.js"
import { externalHandle } from "../externalHandle.js"
import { resolveServerMode } from "../serverMode.js"
import type { ServerHandle, StartNatsOptions } from "../types.js"
import { natsHealthy } from "./monitor.js"

/** Environment variable pointing tests at an existing NATS (with JetStream) instead of starting one. */
export const NATS_URL_ENV = "BUS_NATS_URL"

/** The nats-server binary, or a MissingBinaryError naming the package. */
export function natsServerBinary(): string {
  return findExecutable("nats-server", "apt-get install -y nats-server")
}

/**
 * Starts a throwaway JetStream-enabled nats-server on a free loopback port with its own store
 * directory, or returns a non-controllable handle for `BUS_NATS_URL` when that is set.
 *
 * @throws MissingBinaryError when nats-server is not installed.
 * @throws ServerStartError (with the server's log tail) when it does not come up.
 */
export async function startNats(options: StartNatsOptions = {}): Promise<ServerHandle> {
  resolveServerMode()
  const external = process.env[NATS_URL_ENV]
  if (external) {
    await assertReachable(external, NATS_URL_ENV, 4222)
    return externalHandle(external, NATS_URL_ENV)
  }
  const binary = natsServerBinary()
  const dir = createTempDir("nats")
  try {
    const logFile = join(dir, "nats.log")
    writeFileSync(logFile, "")
    const { server, port } = await retryOnPortClash(async () => {
      const [port = 0, monitorPort = 0] = await freePorts(2)
      const server = new ServerProcess({
        label: `nats-server on 127.0.0.1:${port} (${dir})`,
        command: binary,
        args: [
          "-a",
          "127.0.0.1",
          "-p",
          String(port),
          "-m",
          String(monitorPort),
          "-js",
          "-sd",
          join(dir, "store"),
          ...(options.user === undefined ? [] : ["--user", options.user, "--pass", options.password ?? ""]),
        ],
        logFile,
        stopSignal: "SIGTERM",
        isReady: () => natsHealthy(monitorPort),
      })
      await server.start()
      return { server, port }
    })
    return controllableHandle(`nats://127.0.0.1:${port}`, server, dir)
  } catch (error) {
    await removeTempDir(dir)
    throw error
  }
}
