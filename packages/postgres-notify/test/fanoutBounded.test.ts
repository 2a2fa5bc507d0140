import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { type Bus, createBus, type DeliveredEvent, memoryOutbox, Subscriber } from "@bus/core"
import { iteratorBuffer, outboxFeedStats, Transport } from "@bus/core/adapter"
import { Deferred, Effect, Fiber, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { postgresOutbox } from "../src/index.js"
import { inTransaction, startDb, type TestDb } from "./support/db.js"

/**
 * Fan-out memory is bounded per subscriber: a subscriber that never reads while 100,000
 * events flow holds a bounded number of them (the facade's iterator buffer; nothing in the
 * transport), the others get every event in order meanwhile, and the stalled one later
 * reads all of them from its own cursor, without gap or repeat. On the in-memory
 * transport and on Postgres (LISTEN/NOTIFY, real server).
 */

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void
const settledHeap = async () => {
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((r) => setImmediate(r))
  }
  return process.memoryUsage().heapUsed
}

const total = 100_000
const perTransaction = 1_000
// ~300 bytes of data per event: 100,000 of them buffered would be well over 30 MB of heap.
const pad = "x".repeat(300)
const address = { tenant: "acme", channel: "fan" }

let db: TestDb | undefined
beforeAll(async () => {
  db = await startDb()
}, 120_000)
afterAll(async () => {
  await db?.close()
})

interface Target {
  readonly name: string
  readonly open: () => Promise<{ bus: Bus; publish: (from: number, count: number) => Promise<void> }>
  /**
   * Heap the store itself takes for the 100,000 events: the in-memory outbox keeps them
   * in this process (measured with a bus without subscribers); Postgres keeps them in the server.
   */
  readonly storeHeap: () => Promise<number>
}

const batch = (from: number, count: number) =>
  Array.from({ length: count }, (_, k) => ({ ...address, type: "fan.event", data: { i: from + k, pad } }))

const targets: ReadonlyArray<Target> = [
  {
    name: "memory",
    open: async () => {
      const outbox = memoryOutbox()
      const bus = await createBus({
        outbox,
        env: false,
      })
      return {
        bus,
        publish: (from, count) =>
          outbox.transaction((tx) => bus.publish(tx, batch(from, count))).then(() => {}),
      }
    },
    storeHeap: async () => {
      const outbox = memoryOutbox()
      const bus = await createBus({
        outbox,
        env: false,
      })
      try {
        const heap0 = await settledHeap()
        for (let from = 0; from < total; from += perTransaction)
          await outbox.transaction((tx) => bus.publish(tx, batch(from, perTransaction)))
        return (await settledHeap()) - heap0
      } finally {
        await bus.close()
      }
    },
  },
  {
    name: "postgres-notify",
    open: async () => {
      const schema = await db!.freshSchema()
      const bus = await createBus({
        outbox: postgresOutbox({ connectionString: db!.url, schema, migrate: false }),
        env: false,
      })
      return {
        bus,
        publish: (from, count) =>
          inTransaction(db!.pool, (c) => bus.publish(c, batch(from, count))).then(() => {}),
      }
    },
    storeHeap: async () => 0,
  },
]

/** Reads `sub` in the background, keeping only each event's `i` (so the test's own memory stays small). */
const reader = (sub: AsyncIterable<DeliveredEvent>) => {
  const seen: Array<number> = []
  const done = (async () => {
    for await (const e of sub) {
      seen.push((e.data as { i: number }).i)
      if (seen.length === total) return
    }
  })()
  return { seen, done }
}

const expectExactly = (seen: ReadonlyArray<number>) => {
  expect(seen.length).toBe(total)
  // In order, no gap, no repeat: seen[k] === k for every k.
  const wrong = seen.findIndex((i, k) => i !== k)
  expect(wrong).toBe(-1)
}

const publishAll = async (publish: (from: number, count: number) => Promise<void>) => {
  for (let from = 0; from < total; from += perTransaction) await publish(from, perTransaction)
}

describe.each(targets)("$name: a subscriber that never reads", (target) => {
  let storeHeap = 0
  beforeAll(async () => {
    storeHeap = await target.storeHeap()
  }, 120_000)

  it("Promise facade: holds a bounded number of events, others get everything, it resumes without gap or repeat", async () => {
    const { bus, publish } = await target.open()
    try {
      const stalled = bus.subscribe({ ...address, from: "now" })
      const others = [bus.subscribe({ ...address, from: "now" }), bus.subscribe({ ...address, from: "now" })]
      await Promise.all([stalled.ready, ...others.map((s) => s.ready)])
      const readers = others.map(reader)
      const heap0 = await settledHeap()
      let maxBuffered = 0
      const sample = setInterval(() => {
        maxBuffered = Math.max(maxBuffered, stalled.buffered)
      }, 5)
      try {
        await publishAll(publish)
        await Promise.all(readers.map((r) => r.done))
      } finally {
        clearInterval(sample)
      }
      maxBuffered = Math.max(maxBuffered, stalled.buffered)
      const heap1 = await settledHeap()
      for (const r of readers) expectExactly(r.seen)
      // The stalled iterator holds at most its buffer plus one page; the transport holds
      // only its shared, windowed log for the address.
      expect(maxBuffered).toBeLessThanOrEqual(iteratorBuffer + 500)
      const transport = await bus.runtime.runPromise(Transport.use((t) => Effect.succeed(t)))
      const feed = outboxFeedStats(transport)?.get(`${address.tenant}/${address.channel}`)
      expect(feed).toBeDefined()
      expect(feed!.events).toBeLessThanOrEqual(4096 + perTransaction)
      // Far below what buffering the backlog would take (100,000 × ~300 bytes of padding
      // alone is 30 MB): beyond what the store itself keeps, the readers' own arrays of
      // numbers and the feed's window remain.
      expect(heap1 - heap0 - storeHeap).toBeLessThan(12 * 1024 * 1024)
      // It resumes from its own cursor: every event, in order, once.
      const late = reader(stalled)
      await late.done
      expectExactly(late.seen)
      expect(stalled.buffered).toBeLessThanOrEqual(iteratorBuffer + 500)
      await stalled.close()
      for (const s of others) await s.close()
    } finally {
      await bus.close()
    }
  }, 400_000)

  it("Effect Stream: a handler that blocks pauses only its own subscription, which then resumes without gap", async () => {
    const { bus, publish } = await target.open()
    try {
      const gate = Effect.runSync(Deferred.make<void>())
      const stalledSeen: Array<number> = []
      const fastSeen: Array<number> = []
      const start = await bus.head(address)
      const consume = (seen: Array<number>, blockFirst: boolean) =>
        Subscriber.use((s) =>
          s.subscribe({ ...address, from: start }).pipe(
            Stream.runForEach((e) =>
              Effect.gen(function* () {
                if (blockFirst && seen.length === 0) yield* Deferred.await(gate)
                seen.push((e.data as { i: number }).i)
              }),
            ),
          ),
        )
      const stalled = bus.runtime.runFork(consume(stalledSeen, true))
      const fast = bus.runtime.runFork(consume(fastSeen, false))
      const heap0 = await settledHeap()
      await publishAll(publish)
      const deadline = Date.now() + 120_000
      while (fastSeen.length < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
      const heap1 = await settledHeap()
      expectExactly(fastSeen)
      expect(stalledSeen.length).toBe(0)
      expect(heap1 - heap0 - storeHeap).toBeLessThan(12 * 1024 * 1024)
      Effect.runSync(Deferred.succeed(gate, undefined))
      while (stalledSeen.length < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
      expectExactly(stalledSeen)
      await Effect.runPromise(Fiber.interrupt(stalled))
      await Effect.runPromise(Fiber.interrupt(fast))
    } finally {
      await bus.close()
    }
  }, 400_000)
})
