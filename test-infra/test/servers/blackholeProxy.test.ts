import net from "node:net"
import { setTimeout as delay } from "node:timers/promises"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  type BlackholeProxy,
  type ServerHandle,
  startBlackholeProxy,
  startRedis,
  viaProxy,
} from "../../src/index.js"

/** A raw connection speaking Redis's inline protocol, so every byte on the wire is ours. */
interface Raw {
  readonly socket: net.Socket
  /** Sends PING and resolves with the reply, or `timeout` after `ms`. */
  readonly ping: (ms: number) => Promise<string>
  readonly closed: () => boolean
}

const connectRaw = (port: number): Promise<Raw> =>
  new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    let received = ""
    let closed = false
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString("utf8")
    })
    socket.on("close", () => {
      closed = true
    })
    socket.on("error", () => {})
    socket.once("connect", () =>
      resolve({
        socket,
        closed: () => closed,
        ping: async (ms) => {
          received = ""
          socket.write("PING\r\n")
          const deadline = Date.now() + ms
          while (Date.now() < deadline) {
            if (received.includes("\r\n")) return received.trim()
            await delay(10)
          }
          return "timeout"
        },
      }),
    )
    socket.once("error", reject)
  })

describe("startBlackholeProxy", () => {
  let server: ServerHandle
  let proxy: BlackholeProxy
  const sockets: Array<net.Socket> = []

  beforeAll(async () => {
    server = await startRedis()
    proxy = await startBlackholeProxy({ targetPort: Number(new URL(server.url).port) })
  })
  afterAll(async () => {
    for (const s of sockets) s.destroy()
    await proxy?.close()
    await server?.stop()
  })

  it("forwards, blackholes without closing, restores, and resets", async () => {
    expect(viaProxy(server.url, proxy)).toBe(`redis://127.0.0.1:${proxy.port}`)
    const raw = await connectRaw(proxy.port)
    sockets.push(raw.socket)
    expect(await raw.ping(2_000)).toBe("+PONG")

    proxy.blackhole()
    expect(proxy.blackholed()).toBe(true)
    // No reply and no close: the half-open connection TCP alone never notices.
    expect(await raw.ping(300)).toBe("timeout")
    expect(raw.closed()).toBe(false)
    expect(proxy.connections()).toBe(1)
    // A new connection is accepted and then hangs the same way.
    const during = await connectRaw(proxy.port)
    sockets.push(during.socket)
    expect(await during.ping(300)).toBe("timeout")
    // The server closing a connection while blackholed is not passed on.
    await new Promise<void>((resolve) => {
      const admin = net.connect({ host: "127.0.0.1", port: Number(new URL(server.url).port) }, () => {
        admin.write("CLIENT KILL TYPE normal SKIPME yes\r\n")
      })
      admin.on("data", () => {
        admin.destroy()
        resolve()
      })
      admin.on("error", () => resolve())
    })
    await delay(100)
    expect(raw.closed()).toBe(false)
    expect(during.closed()).toBe(false)

    // Restored: connections the server closed meanwhile are closed now; new ones work.
    proxy.restore()
    await delay(50)
    expect(raw.closed()).toBe(true)
    expect(during.closed()).toBe(true)
    const after = await connectRaw(proxy.port)
    sockets.push(after.socket)
    expect(await after.ping(2_000)).toBe("+PONG")

    // Still-working connections survive a blackhole-restore cycle untouched.
    proxy.blackhole()
    expect(await after.ping(200)).toBe("timeout")
    proxy.restore()
    expect(await after.ping(2_000)).toBe("+PONG")

    proxy.reset()
    await delay(50)
    expect(after.closed()).toBe(true)
    expect(proxy.connections()).toBe(0)
    const again = await connectRaw(proxy.port)
    sockets.push(again.socket)
    expect(await again.ping(2_000)).toBe("+PONG")
    expect(proxy.accepted()).toBe(4)
  })

  it("close() destroys open connections even while blackholed", async () => {
    const other = await startBlackholeProxy({ targetPort: Number(new URL(server.url).port) })
    const raw = await connectRaw(other.port)
    sockets.push(raw.socket)
    other.blackhole()
    await other.close()
    await delay(50)
    expect(raw.closed()).toBe(true)
    await expect(connectRaw(other.port)).rejects.toThrow()
  })
})
