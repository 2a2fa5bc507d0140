import { isBusError } from "@bus/core"
import { freePort, rejectionOf, type ServerHandle, startRedis } from "@bus/test-infra"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { toBusError } from "../src/errors.js"
import { uniqueName } from "./support.js"

/**
 * The Redis error mapper on what ioredis throws against a real server: each condition lands
 * on the member of the error family every transport uses for it, with `retryable` saying
 * whether the same call can succeed later. (A payload over the limit is `PayloadTooLarge`:
 * see transport.test.ts.)
 */

/** A client that neither retries nor queues: each command fails at once with what the server said. */
const client = (url: string, password?: string): Redis => {
  const redis = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
    // No INFO before the first command: the tests want the server's answer to their own command.
    enableReadyCheck: false,
    ...(password === undefined ? {} : { password }),
  })
  redis.on("error", () => {})
  return redis
}

let server: ServerHandle
let admin: Redis

beforeAll(async () => {
  // A server of its own: it gets a password, which the other test files' servers must not.
  server = await startRedis({ appendOnly: false })
  admin = client(server.url)
  await admin.connect()
  // Connections authenticated before the password was set stay authenticated.
  await admin.config("SET", "requirepass", "right")
})

afterAll(async () => {
  admin?.disconnect()
  await server?.stop()
})

describe("toBusError (redis-streams)", () => {
  it("connection refused: TransportUnavailable, retryable", async () => {
    const redis = client(`redis://127.0.0.1:${await freePort()}`)
    try {
      const mapped = toBusError(await rejectionOf(() => redis.connect()), "connect")
      expect(mapped).toMatchObject({
        _tag: "TransportUnavailable",
        transport: "redis-streams",
        retryable: true,
      })
      expect(mapped.message).toMatch(/^connect: /)
    } finally {
      redis.disconnect()
    }
  })

  it("no password (NOAUTH) and a wrong one (WRONGPASS): ConfigError, not retryable", async () => {
    // ioredis opens with HELLO; the server's refusal arrives as the client's "error" event.
    const refusal = async (password?: string): Promise<unknown> => {
      const redis = client(server.url, password)
      const seen: Array<unknown> = []
      redis.on("error", (e: unknown) => seen.push(e))
      try {
        await redis.connect().catch(() => undefined)
        return seen.find((e) => e instanceof Error && e.name === "ReplyError")
      } finally {
        redis.disconnect()
      }
    }
    const noAuth = toBusError(await refusal(), "connect")
    expect(noAuth).toMatchObject({ _tag: "ConfigError", retryable: false })
    expect(noAuth.message).toMatch(/NOAUTH/)
    const wrongPass = toBusError(await refusal("wrong"), "connect")
    expect(wrongPass).toMatchObject({ _tag: "ConfigError", retryable: false })
    expect(wrongPass.message).toMatch(/WRONGPASS/)
  })

  it("a command the same key refuses again (WRONGTYPE): TransportFailure, not retryable", async () => {
    const key = uniqueName("k")
    await admin.set(key, "a string")
    const mapped = toBusError(await rejectionOf(() => admin.xadd(key, "*", "f", "v")), `XADD ${key}`)
    expect(mapped).toMatchObject({ _tag: "TransportFailure", transport: "redis-streams", retryable: false })
    expect(mapped.message).toMatch(/WRONGTYPE/)
  })

  it("a busy server (BUSY, a script running too long): TransportFailure, retryable", async () => {
    // A script that runs past busy-reply-threshold makes the server answer BUSY to others.
    await admin.config("SET", "busy-reply-threshold", "50")
    const spinner = client(server.url, "right")
    const other = client(server.url, "right")
    try {
      // Both connected (HELLO answered) before the server gets busy.
      await spinner.connect()
      await other.connect()
      const spinning = spinner
        .eval(
          "local t = redis.call('TIME') while true do local n = redis.call('TIME') if n[1] - t[1] >= 2 then break end end return 1",
          0,
        )
        .catch(() => undefined)
      let error: unknown
      for (let i = 0; i < 100 && error === undefined; i++) {
        error = await other.ping().then(
          () => undefined,
          (e: unknown) => e,
        )
        if (error === undefined) await new Promise((r) => setTimeout(r, 20))
      }
      await spinning
      const mapped = toBusError(error, "PING")
      expect(mapped).toMatchObject({ _tag: "TransportFailure", retryable: true })
      expect(mapped.message).toMatch(/BUSY/)
    } finally {
      spinner.disconnect()
      other.disconnect()
    }
  })

  it("keeps a bus error as it is", () => {
    const once = toBusError(new Error("boom"), "x")
    expect(isBusError(once)).toBe(true)
    expect(toBusError(once, "y")).toBe(once)
  })
})
