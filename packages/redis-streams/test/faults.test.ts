import { setTimeout as delay } from "node:timers/promises"
import { type DeliveredEvent, memoryOutbox } from "@bus/core"
import { type Envelope, OutboxRelay, runRelay, type SendMeta, sendEach, Transport } from "@bus/core/adapter"
import { type ServerHandle, startRedis } from "@bus/test-infra"
import { Effect, Layer, ManagedRuntime } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelKeys, redisStreamsTransport } from "../src/adapter.js"
import { type RedisStreamsOptions, resendFromOutbox } from "../src/index.js"
import {
  type Address,
  duplicatesOf,
  killableStore,
  publish,
  Resources,
  streamEventIds,
  Tally,
  txEvents,
  orderViolations as txOrderViolations,
  uniqueAddress,
  uniqueName,
  waitFor,
} from "./support.js"

/**
 * Fault scenarios against a real redis-server. Each prints one line:
 * sent (committed to the outbox) / delivered (distinct events a consumer-group handler
 * finished) / duplicates (events a handler finished more than once), with the
 * subscriber's and the stream's own numbers.
 */

let aof: ServerHandle
let admin: Redis
beforeAll(async () => {
  aof = await startRedis({ appendOnly: true })
  admin = new Redis(aof.url, { maxRetriesPerRequest: null })
  admin.on("error", () => {})
  await everysec()
})
afterAll(async () => {
  await admin?.quit().catch(() => admin?.disconnect())
  await aof?.stop()
})

/** The recommended AOF policy; test-infra starts Redis with `appendfsync no` (see docs/redis.md). */
const everysec = async () => {
  await admin.config("SET", "appendfsync", "everysec")
  expect(await admin.config("GET", "appendfsync")).toEqual(["appendfsync", "everysec"])
}

const redisUp = () =>
  waitFor(async () => (await admin.ping().catch(() => "")) === "PONG", 30_000, "Redis to answer again")

const report = (
  scenario: string,
  numbers: {
    sent: number
    handled: Tally
    sub?: Tally
    ids: ReadonlyArray<string>
    stream: ReadonlyArray<string>
  },
) => {
  const delivered = numbers.ids.filter((id) => numbers.handled.has(id)).length
  const line =
    `fault "${scenario}": sent=${numbers.sent} delivered=${delivered} duplicates=${numbers.handled.duplicates.length}` +
    (numbers.sub
      ? ` | subscriber delivered=${numbers.ids.filter((id) => numbers.sub!.has(id)).length} duplicates=${numbers.sub.duplicates.length}`
      : "") +
    ` | stream entries=${numbers.stream.length} duplicate entries=${duplicatesOf(numbers.stream).length}`
  console.log(line)
  return { delivered, duplicates: numbers.handled.duplicates.length }
}

/**
 * Steady publishing (transactions of 10) to a consumer-group member and a subscriber;
 * the fault is injected mid-stream; publishing continues; then every committed event
 * must reach both exactly once, and the stream must hold each event once.
 */
async function steadyStream(
  scenario: string,
  url: string,
  inject: () => Promise<void>,
  options: Partial<RedisStreamsOptions> = {},
) {
  const r = new Resources()
  const outbox = memoryOutbox()
  let stop = false
  let producer: Promise<void> = Promise.resolve()
  try {
    const bus = await r.bus(outbox, { url, blockMs: 200, claimIdleMs: 10_000, ...options })
    const redis = r.redis(url)
    const a = uniqueAddress()
    const handled = new Tally()
    r.defer(
      bus.consume({ ...a, group: "faults", initialBackoffMs: 50, maxBackoffMs: 1_000 }, (e) => handled.add(e))
        .close,
    )
    const sub = r.collect(bus, a, "beginning")
    const sent: Array<string> = []
    producer = (async () => {
      for (let tx = 0; !stop; tx++) {
        sent.push(...(await publish(bus, outbox, txEvents(a, `f${tx}`, 10))))
        await delay(5) // pacing: a steady stream rather than a flood
      }
    })()
    await waitFor(
      () => sent.length >= 200 && handled.distinct >= 100,
      30_000,
      "steady traffic before the fault",
    )
    const before = sent.length
    await inject()
    await waitFor(() => sent.length >= before + 300, 60_000, "publishing to continue after the fault")
    stop = true
    await producer
    await waitFor(
      () => handled.hasAll(sent) && sub.hasAll(sent),
      120_000,
      () =>
        `every event (handler missing ${handled.missing(sent).length}, subscriber missing ${sub.missing(sent).length})`,
    )
    const stream = await streamEventIds(redis, channelKeys("bus", a).stream)
    const { delivered, duplicates } = report(scenario, { sent: sent.length, handled, sub, ids: sent, stream })
    expect(delivered).toBe(sent.length)
    expect(duplicates).toBe(0)
    expect(sub.duplicates).toEqual([])
    expect(duplicatesOf(stream)).toEqual([])
    expect(stream).toHaveLength(sent.length)
    expect(txOrderViolations(handled.events), "per-transaction order at the handler").toEqual([])
    expect(txOrderViolations(sub.events), "per-transaction order at the subscriber").toEqual([])
  } finally {
    stop = true
    await producer.catch(() => {})
    await r.close()
  }
}

describe("fault scenarios", () => {
  it("Redis killed (SIGKILL) and restarted with AOF on (appendfsync everysec): nothing lost", () =>
    steadyStream("redis SIGKILL + restart, AOF everysec", aof.url, async () => {
      await aof.kill()
      await aof.restart()
      await redisUp()
      await everysec()
    }))

  it("Redis restarted gracefully (SIGTERM) with AOF on: nothing lost", () =>
    steadyStream("redis restart (SIGTERM), AOF everysec", aof.url, async () => {
      await aof.restart()
      await redisUp()
      await everysec()
    }))

  it("Redis paused for 3 s (SIGSTOP/SIGCONT): nothing lost", () =>
    steadyStream("redis paused 3000 ms", aof.url, async () => {
      await aof.pause()
      try {
        await delay(3_000) // the fault's duration
      } finally {
        await aof.resume()
      }
    }))

  it("every client connection killed (CLIENT KILL TYPE normal): reconnects and continues", () =>
    steadyStream("CLIENT KILL TYPE normal", aof.url, async () => {
      const killed = await admin.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
      expect(Number(killed)).toBeGreaterThan(0)
    }))

  it("a consumer killed before it acked: its entries are claimed and handled by another member", async () => {
    const r = new Resources()
    const outbox = memoryOutbox()
    let stop = false
    let producer: Promise<void> = Promise.resolve()
    try {
      const claimIdleMs = 2_000
      // The member to kill runs on a client that never reconnects, like a process that died.
      const crashName = uniqueName("crash")
      const crashClient = new Redis(aof.url, { retryStrategy: () => null, maxRetriesPerRequest: null })
      crashClient.on("error", () => {})
      r.defer(() => crashClient.disconnect())
      const survivorBus = await r.bus(outbox, { url: aof.url, blockMs: 200, claimIdleMs })
      // No relay in the process that dies: the survivor's relay forwards everything.
      const crashBus = await r.bus(
        outbox,
        { client: crashClient, blockMs: 200, claimIdleMs, connectionName: crashName },
        false,
      )
      const redis = r.redis(aof.url)
      const a = uniqueAddress()
      const group = "workers"
      const handled = new Tally()
      const byCrashed = new Tally()
      const bySurvivor = new Tally()
      let crashed = false
      const stuckAtCrash = new Set<string>()
      r.defer(
        crashBus.consume({ ...a, group, concurrency: 4 }, async (e) => {
          // After 50 events the process "dies" in the middle of handling one (and of any
          // other in flight): these handlers never finish and never acknowledge.
          if (crashed || byCrashed.distinct >= 50) {
            crashed = true
            stuckAtCrash.add(e.id)
            await new Promise(() => {})
          }
          await delay(2)
          byCrashed.add(e)
          handled.add(e)
        }).close,
      )
      const survivorAttempts: Array<number> = []
      r.defer(
        survivorBus.consume({ ...a, group }, async (e, attempt) => {
          await delay(2)
          if (attempt > 1) survivorAttempts.push(attempt)
          bySurvivor.add(e)
          handled.add(e)
        }).close,
      )
      const sent: Array<string> = []
      producer = (async () => {
        for (let tx = 0; !stop; tx++) {
          sent.push(...(await publish(survivorBus, outbox, txEvents(a, `k${tx}`, 10))))
          await delay(5)
        }
      })()
      await waitFor(
        () => stuckAtCrash.size > 0 && bySurvivor.distinct >= 50,
        30_000,
        "both members handling events, then the first one stuck",
      )
      // Kill: the crashed member's connections are closed by the server, with entries unacknowledged.
      const list = String(await admin.call("CLIENT", "LIST", "TYPE", "normal"))
      const ids = list
        .split("\n")
        .filter((l) => / name=/.test(l))
        .filter((l) => l.includes(`name=${crashName}`) || crashClientLine(l, crashClient))
        .map((l) => /id=(\d+)/.exec(l)?.[1])
        .filter((id): id is string => id !== undefined)
      for (const id of ids) await admin.call("CLIENT", "KILL", "ID", id)
      const before = sent.length
      await waitFor(() => sent.length >= before + 300, 60_000, "publishing to continue")
      stop = true
      await producer
      await waitFor(
        () => handled.hasAll(sent),
        60_000,
        () =>
          `every event handled (${handled.missing(sent).length} missing, ${stuckAtCrash.size} stuck at the crash)`,
      )
      const stream = await streamEventIds(redis, channelKeys("bus", a).stream)
      const { delivered, duplicates } = report("consumer killed before ack", {
        sent: sent.length,
        handled,
        ids: sent,
        stream,
      })
      console.log(
        `  killed member handled ${byCrashed.distinct} and died holding ${stuckAtCrash.size} unacknowledged; the survivor handled ${bySurvivor.distinct}, ${survivorAttempts.length} of them redeliveries (attempt ${Math.min(...survivorAttempts)}-${Math.max(...survivorAttempts)})`,
      )
      expect(stuckAtCrash.size).toBeGreaterThan(0)
      expect([...stuckAtCrash].every((id) => bySurvivor.has(id))).toBe(true)
      expect(delivered).toBe(sent.length)
      expect(duplicates).toBe(0)
      expect(duplicatesOf(stream)).toEqual([])
    } finally {
      stop = true
      await producer.catch(() => {})
      await r.close()
    }
  })

  it("the relay killed mid-batch and restarted: no duplicate stream entries, nothing lost", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const options = { url: aof.url, blockMs: 200 }
      const bus = await r.bus(outbox, options, false) // the relay runs apart, to be killed
      const redis = r.redis(aof.url)
      const a = uniqueAddress()
      const handled = new Tally()
      r.defer(bus.consume({ ...a, group: "g" }, (e) => handled.add(e)).close)
      const sub = r.collect(bus, a, "beginning")
      const sent: Array<string> = []
      for (let tx = 0; tx < 10; tx++) sent.push(...(await publish(bus, outbox, txEvents(a, `r${tx}`, 50))))

      // Relay one: stops answering after its 137th send (the entry is in Redis, the page's
      // position not yet stored), holding the partition's lease, and is killed there: nothing
      // it would still store or release on its way out reaches the outbox.
      let sends = 0
      const hanging = Layer.effect(
        Transport,
        Effect.gen(function* () {
          const inner = yield* Transport
          const send = (event: Envelope, meta?: SendMeta) =>
            inner
              .send(event, meta)
              .pipe(Effect.andThen(Effect.suspend(() => (++sends >= 137 ? Effect.never : Effect.void))))
          return Transport.of({ ...inner, send, sendAll: sendEach(send) })
        }),
      ).pipe(Layer.provide(redisStreamsTransport(options)))
      const killable = killableStore(outbox)
      const relay1 = ManagedRuntime.make(Layer.merge(hanging, killable.layer))
      try {
        relay1.runFork(runRelay({ owner: "relay-1", batchSize: 200, leaseMs: 1_000 }))
        await waitFor(() => sends >= 137, 30_000, "relay one to hang mid-batch")
      } finally {
        killable.kill()
        await relay1.dispose()
      }
      const midway = await redis.xlen(channelKeys("bus", a).stream)
      const backlog = await Effect.runPromise(outbox.store.relay.backlog)

      // Relay two (the restart): takes the partition over once relay one's lease runs out and
      // re-sends the page from the stored position.
      const relay2 = ManagedRuntime.make(Layer.merge(redisStreamsTransport(options), outbox.layer))
      r.defer(() => relay2.dispose())
      relay2.runFork(runRelay({ owner: "relay-2", maxIdleMs: 100 }))
      await waitFor(
        async () => (await relay2.runPromise(OutboxRelay.use((s) => s.backlog))) === 0,
        30_000,
        "the outbox backlog to drain",
      )
      await waitFor(() => handled.hasAll(sent) && sub.hasAll(sent), 30_000, "every event delivered")
      const stream = await streamEventIds(redis, channelKeys("bus", a).stream)
      console.log(
        `  relay one was killed with ${midway} entries in Redis and ${backlog} rows unforwarded (of them ${midway - (sent.length - backlog)} already in Redis: re-sent by relay two and dropped by the dedupe)`,
      )
      const { delivered, duplicates } = report("relay killed mid-batch, restarted", {
        sent: sent.length,
        handled,
        sub,
        ids: sent,
        stream,
      })
      expect(midway - (sent.length - backlog)).toBeGreaterThan(0)
      expect(stream).toHaveLength(sent.length)
      expect(duplicatesOf(stream)).toEqual([])
      expect(delivered).toBe(sent.length)
      expect(duplicates).toBe(0)
      expect(orderViolations(stream, sent)).toBe(0)
      // The restarted relay resumes the partition from its stored position, so it re-sends the
      // killed relay's page in outbox order: the stream holds one address's events in outbox order.
      expect(stream).toEqual(sent)
    } finally {
      await r.close()
    }
  })
})

/** Events of one transaction (`txEvents` of 50, in `sent` order) that the stream holds out of order. */
const orderViolations = (stream: ReadonlyArray<string>, sent: ReadonlyArray<string>): number => {
  const position = new Map(stream.map((id, i) => [id, i]))
  let violations = 0
  for (let i = 1; i < sent.length; i++) {
    if (i % 50 === 0) continue
    if (position.get(sent[i]!)! < position.get(sent[i - 1]!)!) violations++
  }
  return violations
}

/** True when a CLIENT LIST line is `client`'s own connection (matched by local port). */
const crashClientLine = (line: string, client: Redis): boolean => {
  const port = client.stream?.localPort
  return port !== undefined && line.includes(`addr=127.0.0.1:${port} `)
}

describe("Redis restarted WITHOUT persistence", () => {
  let volatile: ServerHandle
  beforeAll(async () => {
    volatile = await startRedis({ appendOnly: false })
  })
  afterAll(async () => {
    await volatile?.stop()
  })

  it("streams, groups and dedupe markers are gone; running consumers recover on their own, an offline group by resendFromOutbox", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const options = { url: volatile.url, blockMs: 200, claimIdleMs: 5_000 }
      const bus = await r.bus(outbox, options)
      const redis = r.redis(volatile.url)
      const a: Address = uniqueAddress()
      const stream = channelKeys("bus", a).stream
      const live = new Tally()
      r.defer(bus.consume({ ...a, group: "live" }, (e: DeliveredEvent) => live.add(e)).close)
      const sub = r.collect(bus, a, "beginning")
      // A second group that is offline while the data is lost (a deploy, a crashed worker).
      const offline = new Tally()
      await redis.xgroup("CREATE", stream, "offline", "0", "MKSTREAM")
      const recoveryPoint = await Effect.runPromise(outbox.store.head(a))

      const first: Array<string> = []
      for (let tx = 0; tx < 10; tx++) first.push(...(await publish(bus, outbox, txEvents(a, `a${tx}`, 10))))
      await waitFor(() => live.hasAll(first) && sub.hasAll(first), 30_000, "the first batch")
      expect(await redis.xlen(stream)).toBe(first.length)
      const identity = await redis.get(channelKeys("bus", a).identity)

      await volatile.kill()
      await volatile.restart()
      await waitFor(async () => (await redis.ping().catch(() => "")) === "PONG", 30_000, "Redis back")
      // Everything is gone: the stream's identity with it (a running reader may already have
      // given the new stream a new one, and the live group may already be re-sending).
      expect(await redis.get(channelKeys("bus", a).identity)).not.toBe(identity)

      const second: Array<string> = []
      for (let tx = 0; tx < 10; tx++) second.push(...(await publish(bus, outbox, txEvents(a, `b${tx}`, 10))))
      const sent = [...first, ...second]
      // The running consumers notice the loss (the stream's identity key is gone) and recover
      // on their own: the live group re-sends from the outbox, the subscriber re-reads it.
      await waitFor(
        () => live.hasAll(sent) && sub.hasAll(sent),
        30_000,
        () =>
          `the running consumers to recover on their own (live group missing ${live.missing(sent).length}, subscriber ${sub.missing(sent).length})`,
      )
      // A group with no member running during the loss is unknown to the transport: it gets
      // what the stream holds again (the second batch, and what the live group re-sent).
      r.defer(bus.consume({ ...a, group: "offline" }, (e: DeliveredEvent) => offline.add(e)).close)
      await waitFor(
        () => offline.hasAll(second),
        60_000,
        () => `the offline group to catch up on what Redis holds (missing ${offline.missing(second).length})`,
      )
      report("redis restart without persistence (before the manual resend: offline group)", {
        sent: sent.length,
        handled: offline,
        ids: sent,
        stream: await streamEventIds(redis, stream),
      })
      expect(live.duplicates).toEqual([])

      // The manual recovery for such a group: everything after a point before the loss is sent
      // again; events Redis holds again are dropped by their dedupe markers.
      const result = await Effect.runPromise(
        resendFromOutbox({ addresses: [a], from: recoveryPoint }).pipe(
          Effect.provide(Layer.merge(redisStreamsTransport(options), outbox.layer)),
        ),
      )
      expect(result.resent).toBe(sent.length)
      await waitFor(
        () => offline.hasAll(sent) && live.hasAll(sent) && sub.hasAll(sent),
        30_000,
        () => `every consumer to have everything (offline missing ${offline.missing(sent).length})`,
      )
      const entries = await streamEventIds(redis, stream)
      for (const [name, tally] of [
        ["offline group, after recovery", offline],
        ["live group, after recovery", live],
      ] as const) {
        const { delivered, duplicates } = report(`redis restart without persistence (${name})`, {
          sent: sent.length,
          handled: tally,
          sub,
          ids: sent,
          stream: entries,
        })
        expect(delivered).toBe(sent.length)
        expect(duplicates).toBe(0)
      }
      expect(sub.duplicates).toEqual([])
      // The stream after recovery: the second batch once (sent after the loss, deduped on resend),
      // the first batch once more (its markers were lost with the data; re-sent once, by the
      // live group's recovery or by the manual resend, whichever came first).
      expect(entries).toHaveLength(sent.length)
      expect(duplicatesOf(entries)).toEqual([])
    } finally {
      await r.close()
    }
  })
})
