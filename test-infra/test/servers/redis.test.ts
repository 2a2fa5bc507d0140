import { readFileSync } from "node:fs"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { processTree, type ServerHandle, startRedis } from "../../src/index.js"

/** A client that fails fast instead of queueing commands until the server comes back. */
function client(url: string, options: { commandTimeout?: number } = {}): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 0, lazyConnect: false, ...options })
  redis.on("error", () => undefined)
  return redis
}

async function withClient<T>(url: string, work: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = client(url)
  try {
    return await work(redis)
  } finally {
    redis.disconnect()
  }
}

describe("startRedis", () => {
  let server: ServerHandle

  beforeAll(async () => {
    server = await startRedis()
  })
  afterAll(async () => {
    await server?.stop()
  })

  it("serves a loopback URL", async () => {
    expect(server.controllable).toBe(true)
    expect(server.url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/)
    expect(await withClient(server.url, (redis) => redis.config("GET", "appendonly"))).toEqual([
      "appendonly",
      "yes",
    ])
  })

  it("delivers a stream entry through a consumer group (XADD / XREADGROUP)", async () => {
    await withClient(server.url, async (redis) => {
      await redis.xgroup("CREATE", "bus:orders", "relay", "$", "MKSTREAM")
      const id = await redis.xadd("bus:orders", "*", "type", "order.created", "data", '{"n":1}')
      const batch = (await redis.xreadgroup(
        "GROUP",
        "relay",
        "worker-1",
        "COUNT",
        10,
        "STREAMS",
        "bus:orders",
        ">",
      )) as Array<[string, Array<[string, string[]]>]>
      expect(batch).toEqual([["bus:orders", [[id, ["type", "order.created", "data", '{"n":1}']]]]])
      expect(await redis.xack("bus:orders", "relay", id as string)).toBe(1)
    })
  })

  it("keeps keys across restart(), and across kill() + restart() through the append-only file", async () => {
    const url = server.url
    await withClient(server.url, (redis) => redis.set("kept:graceful", "1"))
    await server.restart()
    expect(server.url).toBe(url)
    await withClient(server.url, (redis) => redis.set("kept:killed", "2"))
    await server.kill()
    await server.restart()
    expect(await withClient(server.url, (redis) => redis.mget("kept:graceful", "kept:killed"))).toEqual([
      "1",
      "2",
    ])
    expect(await withClient(server.url, (redis) => redis.xlen("bus:orders"))).toBe(1)
  })

  it("freezes on pause() and answers again after resume()", async () => {
    const redis = client(server.url, { commandTimeout: 300 })
    try {
      expect(await redis.ping()).toBe("PONG")
      await server.pause()
      await expect(redis.ping()).rejects.toThrow(/timed out/i)
      await server.resume()
      expect(await withClient(server.url, (fresh) => fresh.ping())).toBe("PONG")
    } finally {
      await server.resume()
      redis.disconnect()
    }
  })

  it("loses everything on restart without the append-only file", async () => {
    const volatile = await startRedis({ appendOnly: false })
    try {
      await withClient(volatile.url, (redis) => redis.set("gone", "1"))
      await volatile.restart()
      expect(await withClient(volatile.url, (redis) => redis.get("gone"))).toBeNull()
    } finally {
      await volatile.stop()
    }
  })

  it("exposes the server's pid: redis-server itself, a new one after restart(), none once stopped", async () => {
    const own = await startRedis({ appendOnly: false })
    try {
      const first = own.pid()
      expect(first).toBeGreaterThan(0)
      expect(readFileSync(`/proc/${first}/comm`, "utf8")).toMatch(/redis-server/)
      await own.restart()
      const second = own.pid()
      expect(second).toBeGreaterThan(0)
      expect(second).not.toBe(first)
      expect(processTree(second as number)[0]?.pid).toBe(second)
      expect(processTree(first as number)).toEqual([])
      await own.stop()
      expect(own.pid()).toBeUndefined()
    } finally {
      await own.stop()
    }
  })
})
