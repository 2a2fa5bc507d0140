import { type Bus, createBus, type DeliveredEvent, type MemoryOutbox, memoryOutbox } from "@bus/core"
import { splitCursor } from "@bus/core/adapter"
import { type ServerHandle, startRedis } from "@bus/test-infra"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { redisStreams } from "../src/index.js"
import { uniqueAddress, waitFor } from "./support.js"

/**
 * The transport flip against a real Redis, with the in-memory outbox as the source of
 * truth (the Postgres version, under load and across processes, is in packages/cli/test/flip):
 * straight from the outbox, then Redis Streams through the relay, then straight again.
 */

let redis: ServerHandle

beforeAll(async () => {
  redis = await startRedis()
})

afterAll(async () => {
  await redis?.stop()
})

const start = (outbox: MemoryOutbox, transport: "memory" | "redis-streams", keyPrefix: string) =>
  createBus({
    outbox,
    transport: { use: transport, broker: redisStreams({ url: redis.url, keyPrefix, blockMs: 200 }) },
    env: false,
    relay: { maxIdleMs: 20, batchSize: 7 },
  })

describe("flip to Redis Streams and back", () => {
  it("resumes subscribers from their cursors and groups from their positions: no gap, no duplicate to handlers", async () => {
    const outbox = memoryOutbox()
    const keyPrefix = `flip${Date.now().toString(36)}`
    const address = uniqueAddress()
    const handled: Array<string> = []
    const run = async (transport: "memory" | "redis-streams", from: string | undefined, publish: number) => {
      const bus: Bus = await start(outbox, transport, keyPrefix)
      const received: Array<DeliveredEvent> = []
      const sub = bus.subscribe({ ...address, from: from ?? "beginning" })
      await sub.ready
      const reading = (async () => {
        for await (const e of sub) received.push(e)
      })()
      const consumer = bus.consume({ ...address, group: "mailer" }, (e) => {
        handled.push(e.id)
      })
      for (let i = 0; i < publish; i += 4) {
        await outbox.transaction(async (tx) => {
          await bus.publish(
            tx,
            Array.from({ length: Math.min(4, publish - i) }, (_, k) => ({
              ...address,
              type: "t",
              data: { i: i + k },
            })),
          )
        })
      }
      return {
        received,
        stop: async (expected: { received: number; handled: number }) => {
          await waitFor(
            () => received.length >= expected.received && handled.length >= expected.handled,
            15_000,
            () =>
              `${transport}: ${received.length}/${expected.received} received, ${handled.length}/${expected.handled} handled`,
          )
          await Promise.all([sub.close(), consumer.close()])
          await reading
          await bus.close()
          return received.at(-1)?.cursor
        },
      }
    }

    const one = await run("memory", undefined, 20)
    const cursor1 = await one.stop({ received: 20, handled: 20 })
    const two = await run("redis-streams", cursor1, 30)
    const cursor2 = await two.stop({ received: 30, handled: 50 })
    expect(cursor2).toMatch(/^redis2:[0-9a-f]{8}\.[0-9a-f]{12}:\d+-\d+~@[0-9a-f]{8}:mem1:/)
    expect(splitCursor(cursor2!).frontier).toBeDefined()
    const three = await run("memory", cursor2, 10)
    await three.stop({ received: 10, handled: 60 })

    const all = outbox.committed().map((e) => e.id)
    const ids = (r: { received: ReadonlyArray<DeliveredEvent> }) => r.received.map((e) => e.id)
    // Into Redis: exactly the events after the outbox cursor.
    expect(ids(two)).toEqual(all.slice(20, 50))
    // Back out: no gap; the stream was drained, so its last frontier covered everything.
    expect(ids(three)).toEqual(all.slice(50))
    expect(handled).toEqual(all)

    // The stream holds every event once, with its outbox position and frontier.
    const client = new Redis(redis.url)
    try {
      const entries = (await client.xrange(
        `${keyPrefix}:{${address.tenant}}:${address.channel}`,
        "-",
        "+",
      )) as Array<[string, Array<string>]>
      expect(entries).toHaveLength(50)
      expect(entries[0]![1]).toEqual(expect.arrayContaining(["pos", "front"]))
    } finally {
      client.disconnect()
    }
  })

  it("refuses an outbox cursor when the stream was trimmed", async () => {
    const outbox = memoryOutbox()
    const keyPrefix = `trim${Date.now().toString(36)}`
    const address = uniqueAddress()
    const bus = await start(outbox, "redis-streams", keyPrefix)
    await outbox.transaction((tx) =>
      bus.publish(
        tx,
        Array.from({ length: 5 }, (_, i) => ({ ...address, type: "t", data: { i } })),
      ),
    )
    const client = new Redis(redis.url)
    const key = `${keyPrefix}:{${address.tenant}}:${address.channel}`
    try {
      await waitFor(async () => (await client.xlen(key)) === 5, 10_000, "the relay")
      await client.xtrim(key, "MAXLEN", 2)
    } finally {
      client.disconnect()
    }
    const sub = bus.subscribe({ ...address, from: `mem1:${outbox.epoch}:1` })
    await expect(sub.ready.then(() => sub[Symbol.asyncIterator]().next())).rejects.toMatchObject({
      _tag: "CursorInvalid",
      reason: "expired",
    })
    await bus.close()
  })
})
