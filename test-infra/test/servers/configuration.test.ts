import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import {
  MissingBinaryError,
  type PostgresHandle,
  resolveServerMode,
  type ServerHandle,
  startNats,
  startNatsCluster,
  startPostgres,
  startRedis,
} from "../../src/index.js"
import { redisAnswersPing } from "../../src/servers/redis/ping.js"

/** Sets environment variables for one test; `afterEach` puts the old values back. */
const saved = new Map<string, string | undefined>()
function setEnv(name: string, value: string | undefined): void {
  if (!saved.has(name)) saved.set(name, process.env[name])
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
}
afterEach(() => {
  for (const [name, value] of saved) {
    if (value === undefined) delete process.env[name]
    else process.env[name] = value
  }
  saved.clear()
})

describe("external servers from BUS_*_URL", () => {
  let postgres: PostgresHandle
  let redis: ServerHandle
  let nats: ServerHandle

  beforeAll(async () => {
    ;[postgres, redis, nats] = await Promise.all([startPostgres(), startRedis(), startNats()])
  })
  afterAll(async () => {
    await Promise.all([postgres?.stop(), redis?.stop(), nats?.stop()])
  })

  it("returns a non-controllable handle for the given URL, whose fault injection refuses", async () => {
    setEnv("BUS_REDIS_URL", redis.url)
    const external = await startRedis()
    expect(external.controllable).toBe(false)
    expect(external.url).toBe(redis.url)
    for (const operation of [external.kill, external.pause, external.resume, external.restart]) {
      await expect(operation()).rejects.toThrow(/it is external \(BUS_REDIS_URL is set\)/)
    }
    await external.stop()
    await external[Symbol.asyncDispose]()
    // stop() on an external handle left the server alone.
    expect(await redisAnswersPing(Number(new URL(redis.url).port))).toBe(true)
  })

  it("honours BUS_NATS_URL and BUS_NATS_CLUSTER_URL", async () => {
    setEnv("BUS_NATS_URL", nats.url)
    const external = await startNats()
    expect(external).toMatchObject({ url: nats.url, controllable: false })
    // Not a process of ours (maybe not even on this machine): no pid to read CPU from.
    expect(external.pid()).toBeUndefined()
    setEnv("BUS_NATS_CLUSTER_URL", `${nats.url},${nats.url}`)
    const cluster = await startNatsCluster()
    expect(cluster).toMatchObject({ url: `${nats.url},${nats.url}`, controllable: false })
    expect(cluster.nodes.map((node) => node.controllable)).toEqual([false, false])
    await expect(cluster.nodes[0]?.kill()).rejects.toThrow(/external/)
    await cluster.stop()
  })

  it("honours BUS_PG_URL, and terminateConnections still works there since it is plain SQL", async () => {
    setEnv("BUS_PG_URL", postgres.url)
    const external = await startPostgres({ binaries: "local", database: "ignored" })
    expect(external).toMatchObject({ url: postgres.url, controllable: false })
    await expect(external.pause()).rejects.toThrow(/external/)
    const victim = new pg.Client({ connectionString: external.url, application_name: "bus-victim" })
    victim.on("error", () => undefined)
    const dropped = new Promise<Error>((resolve) => victim.once("error", resolve))
    await victim.connect()
    expect(await external.terminateConnections({ applicationName: "bus-victim" })).toBe(1)
    expect((await dropped).message).toMatch(/administrator command/)
    await victim.end().catch(() => undefined)
  })

  it("fails fast, naming the variable, when the external server is unreachable", async () => {
    const closedPort = Number(new URL(redis.url).port)
    await redis.kill()
    try {
      setEnv("BUS_REDIS_URL", `redis://127.0.0.1:${closedPort}`)
      await expect(startRedis()).rejects.toThrow(
        `BUS_REDIS_URL=redis://127.0.0.1:${closedPort} is not reachable`,
      )
    } finally {
      await redis.restart()
    }
  })

  it("keeps passwords out of its error messages", async () => {
    setEnv("BUS_PG_URL", "postgres://bus:secret@127.0.0.1:1/db")
    const failure = await startPostgres().catch((error: Error) => error)
    expect((failure as Error).message).toContain(
      "BUS_PG_URL=postgres://bus:***@127.0.0.1:1/db is not reachable",
    )
    expect((failure as Error).message).not.toContain("secret")
  })
})

describe("BUS_TEST_SERVERS", () => {
  it("defaults to auto, which runs local processes (no Docker engine here)", () => {
    expect(resolveServerMode({})).toBe("local")
    expect(resolveServerMode({ BUS_TEST_SERVERS: "auto" })).toBe("local")
    expect(resolveServerMode({ BUS_TEST_SERVERS: "local" })).toBe("local")
  })

  it("fails fast for containers, explaining that the mode needs Docker and is not in this build", async () => {
    setEnv("BUS_TEST_SERVERS", "containers")
    for (const start of [startPostgres, startRedis, startNats, startNatsCluster]) {
      await expect(start()).rejects.toThrow(
        /BUS_TEST_SERVERS=containers needs a Docker engine.*not available/s,
      )
    }
  })

  it("rejects unknown values", () => {
    expect(() => resolveServerMode({ BUS_TEST_SERVERS: "docker" })).toThrow(
      "BUS_TEST_SERVERS=docker is not a valid value; use one of: local, containers, auto",
    )
  })
})

describe("missing binaries", () => {
  it("fail fast with the package to install", async () => {
    const empty = mkdtempSync(join(tmpdir(), "bus-test-empty-path-"))
    try {
      setEnv("PATH", empty)
      const failure = await startRedis().catch((error: unknown) => error)
      expect(failure).toBeInstanceOf(MissingBinaryError)
      expect((failure as Error).message).toBe(
        "redis-server not found on PATH: apt-get install -y redis-server",
      )
    } finally {
      rmSync(empty, { recursive: true, force: true })
    }
  })
})
