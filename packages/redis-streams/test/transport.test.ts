import { CursorInvalid, memoryOutbox } from "@bus/core"
import {
  addressTag,
  DeadLetterStore,
  type Delivery,
  type Envelope,
  type GroupRequest,
  makeEnvelope,
  type OutboxServices,
  type SendItem,
  type SendOutcome,
  Transport,
} from "@bus/core/adapter"
import { type ServerHandle, startRedis } from "@bus/test-infra"
import { Effect, Exit, Fiber, Layer, ManagedRuntime, Stream } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  channelKeys,
  compareStreamIds,
  parseCursor,
  redisStreamsTransport,
  toCursor,
  toHeadCursor,
} from "../src/adapter.js"
import type { RedisStreamsOptions } from "../src/index.js"
import {
  publish,
  Resources,
  streamEventIds,
  Tally,
  txEvents,
  uniqueAddress,
  uniqueName,
  waitFor,
} from "./support.js"

let server: ServerHandle
beforeAll(async () => {
  server = await startRedis()
})
afterAll(async () => {
  await server?.stop()
})

const envelope = (a: { tenant: string; channel: string }, type = "test.event", data: unknown = null) =>
  Effect.runSync(makeEnvelope({ ...a, type, data: data as null }))

/** The transport (and an in-memory outbox for dead letters) as a runtime of its own. */
const transportRuntime = (
  r: Resources,
  options: Partial<RedisStreamsOptions> = {},
  outbox = memoryOutbox(),
) => {
  const runtime = ManagedRuntime.make(
    redisStreamsTransport({ url: server.url, blockMs: 200, ...options }).pipe(
      Layer.provideMerge(outbox.layer),
    ),
  )
  r.defer(() => runtime.dispose())
  const run = <A, E>(effect: Effect.Effect<A, E, Transport | OutboxServices>) => runtime.runPromise(effect)
  const send = (event: Envelope) => run(Transport.use((t) => t.send(event)))
  /** A group member whose deliveries are collected; the test settles them by hand. */
  const member = (request: GroupRequest) => {
    const deliveries: Array<Delivery> = []
    const fiber = runtime.runFork(
      Transport.use((t) =>
        t.group(request).pipe(Stream.runForEach((d) => Effect.sync(() => deliveries.push(d)))),
      ),
    )
    const close = () => runtime.runPromise(Fiber.interrupt(fiber))
    r.defer(close)
    return { deliveries, fiber, close }
  }
  return { runtime, run, send, member, outbox }
}

describe("keys and cursors", () => {
  it("keys carry the tenant as hash tag; dead-letter and dedupe keys share it", () => {
    const keys = channelKeys("bus", { tenant: "acme", channel: "orders" })
    expect(keys.stream).toBe("bus:{acme}:orders")
    expect(keys.deadLetter).toBe("bus:{acme}:orders:dlq")
    expect(keys.dedupe("01")).toBe("bus:{acme}:orders:sent:01")
  })

  it("cursors round-trip; anything else is CursorInvalid", () => {
    const binding = { tag: "0123abcd", identity: "0123456789ab" }
    expect(toCursor("1700000000000-5", binding)).toBe("redis2:0123abcd.0123456789ab:1700000000000-5")
    expect(parseCursor(toCursor("1700000000000-5", binding))).toEqual({ id: "1700000000000-5", binding })
    expect(parseCursor(toHeadCursor("17-0", binding, 1234, "pg1:a:b+c"))).toEqual({
      id: "17-0",
      binding,
      anchor: { startedAt: 1234, outboxHead: "pg1:a:b+c" },
    })
    // Legacy cursors still parse, without a binding (accepted unchecked).
    expect(parseCursor("redis1:1700000000000-5")).toEqual({ id: "1700000000000-5" })
    for (const bad of [
      "",
      "0",
      "redis1:",
      "redis1:1-",
      "redis1:01-0",
      "redis1:1-0x",
      "redis1:99999999999999999999-0",
      "redis1:1-0+x+y",
      "redis1:1-0+12+",
      // A delivered cursor's outbox frontier (after "~") is checked too.
      "redis1:1-0~mem1:abcdefab:5x",
      "redis1:1-0~",
      "redis1:1-0~garbage",
      "redis1:1-0~nats1:3",
      `redis1:1-0~pg1:${"a".repeat(32)}:1.2:0badc0de`,
      // Version 2 names its address tag (8 hex digits) and stream identity (12).
      "redis2:1-0",
      "redis2:0123abcd:1-0",
      "redis2:0123abcd.0123456789a:1-0",
      "redis2:0123ABCD.0123456789ab:1-0",
      "redis2:0123abcd.0123456789ab:",
    ]) {
      const r = parseCursor(bad)
      expect(r instanceof CursorInvalid && r.reason, bad).toBe("malformed")
    }
    // A well-formed frontier, of any outbox, leaves the cursor as it is.
    expect(parseCursor("redis1:1-0~mem1:abcdefab:5")).toEqual({ id: "1-0", frontier: "mem1:abcdefab:5" })
    const foreign = parseCursor("mem1:abcdef01:3")
    expect(foreign instanceof CursorInvalid && foreign.reason).toBe("foreign")
    expect(compareStreamIds("9-0", "10-0")).toBeLessThan(0)
    expect(compareStreamIds("10-2", "10-10")).toBeLessThan(0)
    expect(compareStreamIds("10-2", "10-2")).toBe(0)
  })

  it("bad options fail the layer with ConfigError", async () => {
    for (const options of [
      { keyPrefix: "a{b}" },
      { maxLen: 0 },
      { claimIdleMs: 5 },
      { connectionName: "a b" },
    ]) {
      const exit = await Effect.runPromiseExit(
        Effect.scoped(Layer.build(redisStreamsTransport({ url: server.url, ...options }))),
      )
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause), JSON.stringify(options)).toContain(
        "ConfigError",
      )
    }
  })

  it("an unreachable server fails the layer with TransportUnavailable within connectTimeoutMs", async () => {
    const exit = await Effect.runPromiseExit(
      Effect.scoped(
        Layer.build(redisStreamsTransport({ url: "redis://127.0.0.1:1", connectTimeoutMs: 500 })),
      ),
    )
    expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("TransportUnavailable")
  })
})

describe("send", () => {
  it("is idempotent by event id: the same event sent three times is one entry; the marker has the TTL", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r, { dedupeTtlMs: 120_000 })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const e1 = envelope(a, "one", { n: 1 })
      const e2 = envelope(a, "two", { n: 2 })
      await Promise.all([t.send(e1), t.send(e1), t.send(e2)])
      await t.send(e1)
      expect(await streamEventIds(redis, keys.stream)).toEqual(
        // the two concurrent first sends of e1 and the send of e2 may land in either order
        expect.arrayContaining([e1.id, e2.id]),
      )
      expect(await redis.xlen(keys.stream)).toBe(2)
      const ttl = await redis.pttl(keys.dedupe(e1.id))
      expect(ttl).toBeGreaterThan(100_000)
      expect(ttl).toBeLessThanOrEqual(120_000)
      const [entry] = (await redis.xrange(keys.stream, "-", "+", "COUNT", 1)) as Array<
        [string, Array<string>]
      >
      expect(entry![1][0]).toBe("id")
      expect(entry![1][2]).toBe("envelope")
    } finally {
      await r.close()
    }
  })

  it("trims with MAXLEN ~ and refuses a cursor whose following entries were trimmed (CursorInvalid expired)", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r, { maxLen: 10 })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const first = envelope(a)
      await t.send(first)
      const firstId = ((await redis.xrange(keys.stream, "-", "+")) as Array<[string, unknown]>)[0]![0]
      await t.run(
        Effect.forEach(Array.from({ length: 400 }), () =>
          Effect.suspend(() => Transport.use((tr) => tr.send(envelope(a)))),
        ),
      )
      const length = await redis.xlen(keys.stream)
      // The first reader (here `head`) gives the stream its identity, which cursors carry.
      await t.run(Transport.use((tr) => tr.head(a)))
      const binding = { tag: addressTag(a), identity: (await redis.get(keys.identity)) ?? "" }
      expect(length).toBeLessThan(401)
      expect(length).toBeGreaterThanOrEqual(10)
      const exit = await t.runtime.runPromiseExit(
        Transport.use((tr) =>
          tr.subscribe({ ...a, from: toCursor(firstId, binding) }).pipe(Stream.take(1), Stream.runCollect),
        ),
      )
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("expired")
      // A cursor inside what is retained still resumes.
      const tail = (await redis.xrevrange(keys.stream, "+", "-", "COUNT", 2)) as Array<[string, unknown]>
      const resumed = await t.run(
        Transport.use((tr) =>
          tr
            .subscribe({ ...a, from: toCursor(tail[1]![0], binding) })
            .pipe(Stream.take(1), Stream.runCollect),
        ),
      )
      expect(resumed.map((e) => e.cursor)).toEqual([toCursor(tail[0]![0], binding)])
    } finally {
      await r.close()
    }
  })
})

/** Items of one address carrying `{ i }` (and `pad` bytes of padding), with outbox meta. */
const sendItems = (a: { tenant: string; channel: string }, n: number, pad = 0): Array<SendItem> =>
  Array.from({ length: n }, (_, i) => ({
    event: envelope(a, "test.step", { i, pad: "p".repeat(pad) }),
    meta: { position: `mem1:abcdefab:${i + 1}`, frontier: `mem1:abcdefab:${i}` },
  }))

/** `sendAll` until every item is stored, resuming from the stored prefix as the relay does. */
const sendAllUntilDone = async (
  run: (effect: Effect.Effect<SendOutcome, never, Transport>) => Promise<SendOutcome>,
  items: ReadonlyArray<SendItem>,
): Promise<Array<SendOutcome>> => {
  const outcomes: Array<SendOutcome> = []
  for (let done = 0; done < items.length; ) {
    if (outcomes.length > 20) throw new Error(`sendAll made no progress: ${JSON.stringify(outcomes)}`)
    const outcome = await run(Transport.use((t) => t.sendAll(items.slice(done))))
    outcomes.push(outcome)
    done += outcome.sent
  }
  return outcomes
}

describe("sendAll (pipelined)", () => {
  it("stores a batch of 200 events of one address in order, with their outbox meta, in one call", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const items = sendItems(a, 200)
      const heard: Array<number> = []
      expect(await t.run(Transport.use((t) => t.sendAll(items, (n) => heard.push(n))))).toEqual({ sent: 200 })
      expect(heard.at(-1)).toBe(200)
      const { stream } = channelKeys("bus", a)
      expect(await streamEventIds(redis, stream)).toEqual(items.map((x) => x.event.id))
      const entries = (await redis.xrange(stream, "-", "+")) as Array<[string, Array<string>]>
      expect(entries[7]![1]).toEqual(
        expect.arrayContaining(["pos", "mem1:abcdefab:8", "front", "mem1:abcdefab:7"]),
      )
      // Sent again: nothing new (dedupe keys).
      expect(await t.run(Transport.use((t) => t.sendAll(items)))).toEqual({ sent: 200 })
      expect(await redis.xlen(stream)).toBe(200)
    } finally {
      await r.close()
    }
  })

  it("stops at a payload over the limit: sent = its index, PayloadTooLarge, nothing after it stored", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const items = sendItems(a, 20)
      items[12] = { event: { ...items[12]!.event, data: "x".repeat(2 * 1024 * 1024) } }
      const outcome = await t.run(Transport.use((t) => t.sendAll(items)))
      expect(outcome.sent).toBe(12)
      expect(outcome.error).toMatchObject({ _tag: "PayloadTooLarge", retryable: false })
      const { stream } = channelKeys("bus", a)
      expect(await streamEventIds(redis, stream)).toEqual(items.slice(0, 12).map((x) => x.event.id))
    } finally {
      await r.close()
    }
  })

  it("an event failing in the middle of a run (WRONGTYPE): sent = its index, nothing after it stored; the retry stores each once, in order", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const items = sendItems(a, 20)
      // Item 12's dedupe marker is a hash: its dedupe check fails on GET.
      await redis.hset(keys.dedupe(items[12]!.event.id), "x", "1")
      const heard: Array<number> = []
      const outcome = await t.run(Transport.use((t) => t.sendAll(items, (n) => heard.push(n))))
      expect(outcome.sent).toBe(12)
      expect(outcome.error).toMatchObject({ _tag: "TransportFailure" })
      expect(String((outcome.error as { message?: string }).message)).toContain("WRONGTYPE")
      expect(heard.at(-1)).toBe(12)
      // The batch script stops at the failed event: the ones before it landed, none after.
      const landed = await streamEventIds(redis, keys.stream)
      expect(landed).toEqual(items.slice(0, 12).map((x) => x.event.id))
      // Fixed, the relay sends from `sent` again: every event stored once, in order.
      await redis.del(keys.dedupe(items[12]!.event.id))
      expect(await t.run(Transport.use((t) => t.sendAll(items.slice(12))))).toEqual({ sent: 8 })
      expect(await streamEventIds(redis, keys.stream)).toEqual(items.map((x) => x.event.id))
    } finally {
      await r.close()
    }
  })

  it("NOSCRIPT: with the script cache flushed before a sendAll, the script is loaded again and each event stored once", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const items = sendItems(a, 50)
      // The transport is up (its scripts loaded), then the server forgets them.
      expect(await t.run(Transport.use((t) => t.sendAll(items.slice(0, 1))))).toEqual({ sent: 1 })
      await redis.script("FLUSH")
      expect(await t.run(Transport.use((t) => t.sendAll(items)))).toEqual({ sent: 50 })
      const { stream } = channelKeys("bus", a)
      expect(await streamEventIds(redis, stream)).toEqual(items.map((x) => x.event.id))
    } finally {
      await r.close()
    }
  })

  it("the connection killed (CLIENT KILL) in the middle of a large pipeline: after resuming from `sent`, each event once, in order", async () => {
    const r = new Resources()
    try {
      const connectionName = uniqueName("killme")
      const t = transportRuntime(r, { connectionName })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const items = sendItems(a, 10_000, 1024)
      const { stream } = channelKeys("bus", a)
      const run = (effect: Effect.Effect<SendOutcome, never, Transport>) => t.run(effect)
      const first = run(Transport.use((t) => t.sendAll(items)))
      // The replies come back together: kill the connection once Redis has run some of the scripts.
      let atKill = 0
      await waitFor(
        async () => {
          atKill = await redis.xlen(stream)
          return atKill > 0
        },
        10_000,
        "the first entries",
      )
      const kills = Number(await redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
      const outcome = await first
      const outcomes = [outcome]
      if (outcome.sent < items.length)
        outcomes.push(...(await sendAllUntilDone(run, items.slice(outcome.sent))))
      console.log(
        `redis sendAll across CLIENT KILL: ${kills} connections killed after ${atKill} stored; sent per call ${JSON.stringify(outcomes.map((o) => o.sent))}`,
      )
      expect(kills).toBeGreaterThan(0)
      expect(atKill).toBeLessThan(items.length)
      expect(await streamEventIds(redis, stream)).toEqual(items.map((x) => x.event.id))
    } finally {
      await r.close()
    }
  }, 60_000)
})

describe("subscribe", () => {
  it("from beginning, from a cursor, from now; malformed entries are skipped", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const bus = await r.bus(outbox, { url: server.url, blockMs: 200 })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const first = await publish(bus, outbox, txEvents(a, "first", 5))
      // Other writers: garbage, a valid envelope of another tenant, an envelope whose id field lies.
      await redis.xadd(keys.stream, "*", "hello", "world")
      await redis.xadd(keys.stream, "*", "envelope", "{not json")
      const other = envelope({ tenant: uniqueName("t"), channel: a.channel })
      await redis.xadd(keys.stream, "*", "id", other.id, "envelope", JSON.stringify(other))
      const mine = envelope(a)
      await redis.xadd(keys.stream, "*", "id", "lie", "envelope", JSON.stringify(mine))

      const all = r.collect(bus, a, "beginning")
      await waitFor(() => all.hasAll(first), 10_000, "the first batch from the beginning")
      const cursor = all.events[2]!.cursor
      // The outbox frontier the relay stored rides along after "~" (docs/flip.md).
      expect(cursor).toMatch(/^redis2:[0-9a-f]{8}\.[0-9a-f]{12}:\d+-\d+~@[0-9a-f]{8}:mem1:/)
      const rest = r.collect(bus, a, cursor)
      const now = r.collect(bus, a, "now")
      const second = await publish(bus, outbox, txEvents(a, "second", 3))
      await waitFor(
        () => all.hasAll(second) && rest.hasAll(second) && now.hasAll(second),
        10_000,
        () =>
          `all ${all.events.length} ${String(all.error)} rest ${rest.events.length} ${String(rest.error)} now ${now.events.length} ${String(now.error)}`,
      )
      expect(all.events.map((e) => e.id)).toEqual([...first, ...second])
      expect(rest.events.map((e) => e.id)).toEqual([...first.slice(3), ...second])
      expect(now.events.map((e) => e.id)).toEqual(second)
      for (const garbage of ["nope", "redis1:x", "mem1:abcdef01:1"]) {
        const bad = r.collect(bus, a, garbage)
        await waitFor(() => bad.ended, 5_000, "a refused cursor")
        expect((bad.error as { _tag?: string })._tag).toBe("CursorInvalid")
      }
    } finally {
      await r.close()
    }
  })

  it('"now" leaves out events committed before it that the relay sends later, and keeps everything after `ready`', async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      // No relay yet: committed events wait in the outbox, as behind a lagging relay.
      const bus = await r.bus(outbox, { url: server.url, blockMs: 200 }, false)
      const a = uniqueAddress()
      const before = await publish(bus, outbox, txEvents(a, "before", 3))
      // A transaction open across the start: published before, committed after.
      const tx = outbox.begin()
      const open = (await bus.publish(tx, { ...a, type: "open", data: { tx: "open", seq: 0 } })).ids
      const sub = bus.subscribe({ ...a, from: "now" })
      let reading: Promise<void> = Promise.resolve()
      r.defer(async () => {
        await sub.close()
        await reading
      })
      const head = await sub.ready
      expect(head).toMatch(/^redis2:[0-9a-f]{8}\.[0-9a-f]{12}:\d+-\d+\+\d+\+mem2:/)
      tx.commit()
      const after = await publish(bus, outbox, txEvents(a, "after", 3))
      const got = new Tally()
      reading = (async () => {
        for await (const e of sub) got.add(e)
      })()
      const relay = await r.bus(outbox, { url: server.url, blockMs: 200 }) // starts a relay
      expect(relay.capabilities.needsRelay).toBe(true)
      await waitFor(() => got.hasAll([...open, ...after]), 10_000, "the events committed after the start")
      const sentinel = await publish(bus, outbox, { ...a, type: "sentinel" })
      await waitFor(() => got.hasAll(sentinel), 10_000, "the sentinel")
      expect(got.events.map((e) => e.id)).toEqual([...open, ...after, ...sentinel])
      expect(before.filter((id) => got.has(id))).toEqual([])
    } finally {
      await r.close()
    }
  })

  it("one live-read connection per channel and process, however many subscribers; closed with the last one", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const name = uniqueName("feedtest")
      const bus = await r.bus(outbox, { url: server.url, blockMs: 200, connectionName: name })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const feeds = async () =>
        String(await redis.call("CLIENT", "LIST", "TYPE", "normal"))
          .split("\n")
          .filter((line) => line.includes(`name=${name}-feed`)).length
      const subs = Array.from({ length: 20 }, () => bus.subscribe({ ...a, from: "beginning" }))
      const tallies = subs.map(() => new Tally())
      const loops = subs.map(async (s, i) => {
        for await (const e of s) tallies[i]!.add(e)
      })
      const ids = await publish(bus, outbox, txEvents(a, "x", 3))
      await waitFor(() => tallies.every((t) => t.hasAll(ids)), 10_000, "every subscriber")
      expect(await feeds()).toBe(1)
      await Promise.all(subs.map((s) => s.close()))
      await Promise.all(loops)
      await waitFor(async () => (await feeds()) === 0, 5_000, "the feed connection to close")
    } finally {
      await r.close()
    }
  })
})

describe("consumer groups", () => {
  it("ack, retry with delay (attempt from the delivery count), dead letter to the :dlq stream and the outbox", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const group = uniqueName("g")
      const [e1, e2] = [envelope(a, "ok"), envelope(a, "poison")]
      await t.send(e1!)
      // With the relay's outbox meta (entry fields pos / front): still a dead letter with its envelope.
      const meta = { position: "mem1:abcdefab:2", frontier: "mem1:abcdefab:1" }
      await t.run(Transport.use((tr) => tr.send(e2!, meta)))
      const m = t.member({ ...a, group, maxInFlight: 2 })
      await waitFor(() => m.deliveries.length >= 2, 5_000, "two deliveries")
      const [d1, d2] = m.deliveries
      expect([d1!.event.id, d2!.event.id]).toEqual([e1!.id, e2!.id])
      expect([d1!.attempt, d2!.attempt]).toEqual([1, 1])
      expect(d1!.event.cursor).toMatch(/^redis2:/)
      await t.run(d1!.ack)
      await t.run(d1!.ack) // settling twice is harmless

      const retriedAt = Date.now()
      await t.run(d2!.retry(300))
      await waitFor(() => m.deliveries.length >= 3, 5_000, "the retry")
      expect(Date.now() - retriedAt).toBeGreaterThanOrEqual(290)
      const d3 = m.deliveries[2]!
      expect(d3.event.id).toBe(e2!.id)
      expect(d3.attempt).toBe(2)
      await t.run(d3.inProgress)
      await t.run(d3.deadLetter("poison pill"))

      expect(await redis.xpending(keys.stream, group)).toEqual([0, null, null, null])
      const letters = (await redis.xrange(keys.deadLetter, "-", "+")) as Array<[string, Array<string>]>
      expect(letters).toHaveLength(1)
      const fields = Object.fromEntries(
        letters[0]![1].flatMap((v, i, arr) => (i % 2 === 0 ? [[v, arr[i + 1]]] : [])),
      )
      expect(fields).toMatchObject({ group, reason: "poison pill", attempts: "2", id: e2!.id })
      expect(JSON.parse(fields.envelope!).id).toBe(e2!.id)
      const listed = await t.run(Transport.use((tr) => tr.deadLetters(10)))
      expect(listed.map((l) => [l.event.id, l.source, l.attempts, l.reason])).toEqual([
        [e2!.id, group, 2, "poison pill"],
      ])
      expect(await t.run(DeadLetterStore.use((s) => s.deadLetters(10)))).toEqual([])
      // Nothing more arrives.
      const e3 = envelope(a, "after")
      await t.send(e3)
      await waitFor(() => m.deliveries.length >= 4, 5_000, "the next event")
      expect(m.deliveries.map((d) => d.event.id)).toEqual([e1!.id, e2!.id, e2!.id, e3.id])
    } finally {
      await r.close()
    }
  })

  it("a malformed entry is dead-lettered, not delivered", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r)
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const group = uniqueName("g")
      await redis.xadd(keys.stream, "*", "junk", "1")
      const good = envelope(a)
      await t.send(good)
      const m = t.member({ ...a, group, maxInFlight: 1 })
      await waitFor(() => m.deliveries.length >= 1, 5_000, "the good event")
      expect(m.deliveries.map((d) => d.event.id)).toEqual([good.id])
      const letters = (await redis.xrange(keys.deadLetter, "-", "+")) as Array<[string, Array<string>]>
      expect(letters).toHaveLength(1)
      expect(letters[0]![1]).toContain("raw")
    } finally {
      await r.close()
    }
  })

  it("maxInFlight bounds unsettled deliveries; two members share the work and never both handle an event", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const bus1 = await r.bus(outbox, { url: server.url, blockMs: 100 })
      const bus2 = await r.bus(outbox, { url: server.url, blockMs: 100 }, false)
      const a = uniqueAddress()
      const group = uniqueName("g")
      const by = { one: new Tally(), two: new Tally() }
      const all = new Tally()
      let inFlight = 0
      let maxSeen = 0
      const handler = (member: "one" | "two") => async (e: Parameters<Tally["add"]>[0]) => {
        inFlight++
        maxSeen = Math.max(maxSeen, inFlight)
        await new Promise((resolve) => setTimeout(resolve, 1))
        by[member].add(e)
        all.add(e)
        inFlight--
      }
      r.defer(bus1.consume({ ...a, group, concurrency: 2 }, handler("one")).close)
      r.defer(bus2.consume({ ...a, group, concurrency: 2 }, handler("two")).close)
      const ids: Array<string> = []
      for (let tx = 0; tx < 20; tx++) ids.push(...(await publish(bus1, outbox, txEvents(a, `t${tx}`, 10))))
      await waitFor(
        () => all.hasAll(ids),
        20_000,
        () => `all handled (${all.distinct}/${ids.length})`,
      )
      expect(all.duplicates).toEqual([])
      expect(maxSeen).toBeLessThanOrEqual(4)
      console.log(`two members: ${by.one.distinct}/${by.two.distinct} of ${ids.length}`)
      expect(by.one.distinct).toBeGreaterThan(0)
      expect(by.two.distinct).toBeGreaterThan(0)
    } finally {
      await r.close()
    }
  })

  it("a member that stops cleanly hands its unsettled entries back at once (well before claimIdleMs)", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const opts = { url: server.url, blockMs: 100, claimIdleMs: 20_000 }
      const bus1 = await r.bus(outbox, opts)
      const bus2 = await r.bus(outbox, opts, false)
      const a = uniqueAddress()
      const group = uniqueName("g")
      const stuck = new Tally()
      const handled = new Tally()
      const attempts = new Map<string, number>()
      const c1 = bus1.consume({ ...a, group }, async (e) => {
        stuck.add(e)
        await new Promise(() => {}) // never settles: the member is stopped while handling
      })
      const [id] = await publish(bus1, outbox, { ...a, type: "slow" })
      await waitFor(() => stuck.has(id!), 10_000, "member one to start handling")
      await c1.close()
      const started = Date.now()
      r.defer(
        bus2.consume({ ...a, group }, (e, attempt) => {
          attempts.set(e.id, attempt)
          handled.add(e)
        }).close,
      )
      await waitFor(() => handled.has(id!), 15_000, "member two to take the event over")
      const took = Date.now() - started
      console.log(`hand-back: taken over after ${took} ms (claimIdleMs 20000)`)
      expect(took).toBeLessThan(10_000)
      expect(attempts.get(id!)).toBe(2)
    } finally {
      await r.close()
    }
  })

  it("a dead member's entries are claimed after claimIdleMs; consumers with pending entries are never deleted, idle empty ones are", async () => {
    const r = new Resources()
    try {
      const t = transportRuntime(r, { claimIdleMs: 1_000, consumerIdleMs: 1_000 })
      const redis = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const group = uniqueName("g")
      const events = Array.from({ length: 5 }, () => envelope(a))
      for (const e of events) await t.send(e)
      await redis.xgroup("CREATE", keys.stream, group, "0")
      // A consumer that read everything and died before acking (its connection closed).
      const dead = new Redis(server.url)
      await dead.xreadgroup("GROUP", group, "dead-one", "COUNT", 5, "STREAMS", keys.stream, ">")
      dead.disconnect()
      // And one that never had anything pending: deleted once idle.
      await redis.call("XGROUP", "CREATECONSUMER", keys.stream, group, "empty-one")

      const consumers = async () =>
        ((await redis.xinfo("CONSUMERS", keys.stream, group)) as Array<Array<string | number>>).map(
          (c) => [c[1], c[3]] as const,
        )
      expect(Object.fromEntries(await consumers())).toMatchObject({ "dead-one": 5, "empty-one": 0 })

      // A live member with a handler that does nothing yet: the claimed entries stay pending on it.
      const m = t.member({ ...a, group, maxInFlight: 10 })
      await waitFor(() => m.deliveries.length >= 5, 10_000, "the dead member's entries to be claimed")
      expect(m.deliveries.map((d) => d.event.id).sort()).toEqual(events.map((e) => e.id).sort())
      expect(m.deliveries.every((d) => d.attempt >= 2)).toBe(true)
      await waitFor(
        async () => !(await consumers()).some(([name]) => name === "empty-one"),
        10_000,
        "the idle empty consumer to be deleted",
      )
      // While the live member holds the entries it renews them: their idle time drops back
      // before it reaches claimIdleMs, they stay with it, and it is never deleted.
      const mine = (await consumers()).filter(([, pending]) => pending === 5)
      expect(mine).toHaveLength(1)
      const owner = mine[0]![0]
      let renewals = 0
      let lastIdle = -1
      let maxIdle = 0
      await waitFor(
        async () => {
          const rows = (await redis.xpending(keys.stream, group, "-", "+", 10)) as Array<
            [string, string, number, number]
          >
          expect(rows.map((row) => row[1])).toEqual(Array(5).fill(owner))
          const idle = Math.max(...rows.map((row) => row[2]))
          maxIdle = Math.max(maxIdle, idle)
          if (lastIdle >= 0 && idle < lastIdle) renewals++
          lastIdle = idle
          return renewals >= 2
        },
        10_000,
        "two renewals of the held entries",
      )
      expect(maxIdle).toBeLessThan(1_000)
      expect((await consumers()).filter(([, pending]) => pending === 5)).toEqual(mine)
      for (const d of m.deliveries) await t.run(d.ack)
      expect(await redis.xpending(keys.stream, group)).toEqual([0, null, null, null])
    } finally {
      await r.close()
    }
  })
})

describe("connections", () => {
  it("uses a client you pass without closing it; everything the transport opened is closed on release", async () => {
    const r = new Resources()
    try {
      const mine = r.redis(server.url)
      const name = uniqueName("own")
      const outbox = memoryOutbox()
      const redis = r.redis(server.url)
      const count = async () =>
        String(await redis.call("CLIENT", "LIST", "TYPE", "normal"))
          .split("\n")
          .filter((l) => l.includes(`name=${name}`)).length
      const runtime = ManagedRuntime.make(
        Layer.merge(
          redisStreamsTransport({ client: mine, blockMs: 100, connectionName: name }),
          outbox.layer,
        ),
      )
      const a = uniqueAddress()
      const sub = runtime.runFork(
        Transport.use((t) => t.subscribe({ ...a, from: "beginning" }).pipe(Stream.runDrain)),
      )
      const grp = runtime.runFork(
        Transport.use((t) => t.group({ ...a, group: "g", maxInFlight: 1 }).pipe(Stream.runDrain)),
      )
      await waitFor(async () => (await count()) === 2, 5_000, "a feed and a group connection")
      await runtime.runPromise(Fiber.interrupt(sub))
      await runtime.runPromise(Fiber.interrupt(grp))
      await runtime.dispose()
      await waitFor(async () => (await count()) === 0, 5_000, "the transport's connections to close")
      expect(mine.status).toBe("ready")
      expect(await mine.ping()).toBe("PONG")
    } finally {
      await r.close()
    }
  })
})
