import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { ServerStartError } from "../../src/index.js"
import { freePort } from "../../src/net/freePort.js"
import { findExecutable } from "../../src/process/findExecutable.js"
import { ServerProcess } from "../../src/process/serverProcess.js"

describe("a server that does not come up", () => {
  const dir = mkdtempSync(join(tmpdir(), "bus-test-start-failure-"))
  const redis = findExecutable("redis-server", "apt-get install -y redis-server")
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("fails as soon as it exits, with its last log lines", async () => {
    const server = new ServerProcess({
      label: "redis-server with a bad option",
      command: redis,
      args: ["--port", "not-a-port"],
      logFile: join(dir, "exits.log"),
      stopSignal: "SIGTERM",
      isReady: async () => false,
    })
    const failure = await server.start().catch((error: unknown) => error)
    expect(failure).toBeInstanceOf(ServerStartError)
    expect((failure as Error).message).toMatch(
      /^redis-server with a bad option exited \(code 1\) before it was ready/,
    )
    expect((failure as Error).message).toMatch(/--- last log lines ---\n[\s\S]*port/i)
  })

  it("fails after its readiness timeout, with its last log lines, and leaves nothing running", async () => {
    const server = new ServerProcess({
      label: "redis-server that never passes its check",
      command: redis,
      args: ["--port", String(await freePort()), "--bind", "127.0.0.1", "--save", "", "--dir", dir],
      logFile: join(dir, "never-ready.log"),
      stopSignal: "SIGTERM",
      isReady: async () => false,
      readyTimeoutMs: 300,
    })
    const failure = await server.start().catch((error: unknown) => error)
    expect((failure as Error).message).toMatch(
      /did not become ready within 300ms\n--- last log lines ---\n.*Ready to accept connections/s,
    )
    await expect(server.pause()).rejects.toThrow(/it is not running/)
  })
})
