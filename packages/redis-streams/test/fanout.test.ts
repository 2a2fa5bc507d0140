import { type Bus, createBus, type DeliveredEvent } from "@bus/core"
import { feedStatsOf, Transport } from "@bus/core/adapter"
import { postgresOutbox, postgresOutboxOf } from "@bus/postgres-notify"
import { type PostgresHandle, type ServerHandle, startPostgres, startRedis } from "@bus/test-infra"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { redisStreams } from "../src/index.js"
import { captureLogs, uniqueAddress, waitFor } from "./support.js"

/**
 * Fan-out in one process over a Postgres outbox (issue 18): a thousand subscriptions from
 * "now" on one address. In the fan-out benchmark each of them read the outbox head on its
 * own, so a burst of them exhausted the store's pool ("reading the outbox head failed …
 * timeout exceeded when trying to connect") and the subscriptions were ready only after
 * seconds of retries. Here the pool has two connections and a one-second connect timeout:
 * every subscription must become ready with no such failure in the log, and each must get
 * exactly the events published after it was ready.
 */

let postgres: PostgresHandle
let redis: ServerHandle

beforeAll(async () => {
  ;[postgres, redis] = await Promise.all([startPostgres(), startRedis()])
}, 120_000)

afterAll(async () => {
  await Promise.all([postgres?.stop(), redis?.stop()])
})

/** Log lines of the SDK, captured from the default logger (console.log). */
const captured = captureLogs("redis-streams:", "outbox")

const subscribers = 1_000

describe("fan-out: many subscriptions from now on one address", () => {
  it("a thousand subscriptions over a pool of two become ready with no pool timeout, and each gets the next events", async () => {
    const bus: Bus = await createBus({
      outbox: postgresOutbox({
        connectionString: postgres.url,
        schema: `fan${Date.now().toString(36)}`,
        poolSize: 2,
        connectTimeoutMs: 1_000,
      }),
      transport: {
        use: "redis-streams",
        broker: redisStreams({ url: redis.url, keyPrefix: `fan${Date.now().toString(36)}`, blockMs: 200 }),
      },
      env: false,
      relay: { maxIdleMs: 20 },
    })
    const address = uniqueAddress()
    const received: Array<Array<DeliveredEvent>> = []
    const subs: Array<ReturnType<Bus["subscribe"]>> = []
    const readers: Array<Promise<void>> = []
    try {
      const started = performance.now()
      for (let i = 0; i < subscribers; i++) {
        const sub = bus.subscribe({ ...address, from: "now" })
        const got: Array<DeliveredEvent> = []
        subs.push(sub)
        received.push(got)
        readers.push(
          (async () => {
            for await (const e of sub) got.push(e)
          })(),
        )
      }
      await Promise.all(subs.map((s) => s.ready))
      const readyMs = Math.round(performance.now() - started)

      const outbox = await postgresOutboxOf(bus)
      const ids: Array<string> = []
      for (let tx = 0; tx < 3; tx++) {
        const receipt = await outbox.transaction((client) =>
          bus.publish(
            client,
            Array.from({ length: 2 }, (_, i) => ({ ...address, type: "fan.out", data: { tx, i } })),
          ),
        )
        ids.push(...receipt.ids)
      }
      await waitFor(
        () => received.every((got) => got.length >= ids.length),
        60_000,
        () =>
          `${received.filter((got) => got.length >= ids.length).length}/${subscribers} subscribers got all ${ids.length} events`,
      )
      for (const got of received) expect(got.map((e) => e.id)).toEqual(ids)

      const poolTimeouts = captured.lines.filter((l) =>
        /timeout exceeded when trying to connect|outbox head failed/.test(l),
      )
      expect(poolTimeouts, `ready after ${readyMs} ms`).toEqual([])

      // What the process holds for the address is one shared log, bounded by its window.
      const transport = await bus.runtime.runPromise(Transport.use((t) => Effect.succeed(t)))
      const stats = feedStatsOf(transport)
      expect(stats, "the transport serves its subscribers from a shared feed log").toBeDefined()
      const feed = stats!.get(`${address.tenant}/${address.channel}`)
      expect(feed?.events).toBe(ids.length)
    } finally {
      await Promise.all(subs.map((s) => s.close()))
      await Promise.all(readers)
      await bus.close()
    }
  }, 180_000)
})
