import { setTimeout as delay } from "node:timers/promises"
import { AckPolicy, jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type ServerHandle, startNats } from "../../src/index.js"

async function withConnection<T>(url: string, work: (nc: NatsConnection) => Promise<T>): Promise<T> {
  const nc = await connect({ servers: url, reconnect: false })
  try {
    return await work(nc)
  } finally {
    await nc.close()
  }
}

/** Takes the next message of the durable consumer, acks it and returns its payload. */
async function consumeOne(url: string): Promise<string | undefined> {
  return withConnection(url, async (nc) => {
    const consumer = await jetstream(nc).consumers.get("ORDERS", "worker")
    const message = await consumer.next({ expires: 2_000 })
    if (message === null) return undefined
    await message.ackAck()
    return message.string()
  })
}

describe("startNats", () => {
  let server: ServerHandle

  beforeAll(async () => {
    server = await startNats()
  })
  afterAll(async () => {
    await server?.stop()
  })

  it("publishes to JetStream and consumes through a durable consumer", async () => {
    expect(server.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/)
    await withConnection(server.url, async (nc) => {
      const jsm = await jetstreamManager(nc)
      await jsm.streams.add({ name: "ORDERS", subjects: ["orders.>"], storage: StorageType.File })
      await jsm.consumers.add("ORDERS", { durable_name: "worker", ack_policy: AckPolicy.Explicit })
      const js = jetstream(nc)
      await js.publish("orders.created", "first")
      await js.publish("orders.created", "second")
    })
    expect(await consumeOne(server.url)).toBe("first")
  })

  it("keeps messages and the durable consumer's position across kill() + restart() and restart()", async () => {
    const url = server.url
    await server.kill()
    await server.restart()
    expect(server.url).toBe(url)
    expect(await consumeOne(server.url)).toBe("second")
    await withConnection(server.url, (nc) => jetstream(nc).publish("orders.created", "third"))
    await server.restart()
    expect(await consumeOne(server.url)).toBe("third")
    const stored = await withConnection(server.url, async (nc) =>
      (await jetstreamManager(nc)).streams.getMessage("ORDERS", { seq: 1 }),
    )
    expect(stored?.string()).toBe("first")
  })

  it("freezes on pause() and answers again after resume()", async () => {
    const nc = await connect({ servers: server.url, reconnect: false, pingInterval: 60_000 })
    try {
      await server.pause()
      const pong = nc.rtt()
      const outcome = await Promise.race([pong.then(() => "answered"), delay(500).then(() => "silent")])
      expect(outcome).toBe("silent")
      await server.resume()
      // The PING sent while the server was frozen is answered once it runs again.
      expect(await pong).toBeGreaterThanOrEqual(0)
    } finally {
      await server.resume()
      await nc.close()
    }
  })
})
