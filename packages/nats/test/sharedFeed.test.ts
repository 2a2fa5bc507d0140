import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { type BusError, createBus, type DeliveredEvent, memoryOutbox } from "@bus/core"
import { feedCursorOf, feedStatsOf, makeEnvelope, Transport } from "@bus/core/adapter"
import { type ServerHandle, startNats } from "@bus/test-infra"
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream"
import type { NatsConnection } from "@nats-io/transport-node"
import { Cause, Effect, Fiber, ManagedRuntime, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { decodeCursor, natsTransport } from "../src/adapter.js"
import { type NatsTransportOptions, nats } from "../src/index.js"
import { plainConnection, uniqueName, waitFor } from "./support.js"

/**
 * Subscriptions share one consumer per address and process: checked from outside (the
 * server's consumer list through a separate connection), with counts of what every
 * subscriber got.
 */

let server: ServerHandle
let nc: NatsConnection
let jsm: JetStreamManager

beforeAll(async () => {
  server = await startNats()
  nc = await plainConnection(server.url)
  jsm = await jetstreamManager(nc)
})

afterAll(async () => {
  await nc?.close()
  await server?.stop()
})

type Runtime = ManagedRuntime.ManagedRuntime<Transport, BusError>

const withTransport = async <A>(
  options: NatsTransportOptions,
  fn: (rt: Runtime, t: Transport["Service"]) => Promise<A>,
): Promise<A> => {
  const rt = ManagedRuntime.make(natsTransport({ servers: server.url, ...options }))
  try {
    const t = await rt.runPromise(Transport.use((t) => Effect.succeed(t)))
    return await fn(rt, t)
  } finally {
    await rt.dispose()
  }
}

const envelope = (tenant: string, channel: string, data: Record<string, unknown> = {}) =>
  Effect.runSync(makeEnvelope({ tenant, channel, type: "test.event", data: data as never }))

/** The server's consumers on the event stream that read `subject`, asked through another connection. */
const consumersOn = async (subject: string): Promise<number> => {
  let n = 0
  for await (const c of jsm.consumers.list("BUS")) {
    if (c.config.filter_subject === subject || c.config.filter_subjects?.includes(subject)) n++
  }
  return n
}

/** Collects a subscription in the background (only ids and cursors with `lean`, so it holds no payloads). */
class Collected {
  readonly events: Array<Pick<DeliveredEvent, "id" | "cursor">> = []
  error: unknown
  readonly fiber: Fiber.Fiber<void, unknown>
  constructor(rt: Runtime, stream: Stream.Stream<DeliveredEvent, BusError>, lean = false) {
    this.fiber = rt.runFork(
      stream.pipe(
        Stream.runForEach((e) =>
          Effect.sync(() => this.events.push(lean ? { id: e.id, cursor: e.cursor } : e)),
        ),
        Effect.catchCause((cause) =>
          Effect.sync(() => {
            this.error = Cause.squash(cause)
          }),
        ),
      ),
    )
  }
  get ids() {
    return this.events.map((e) => e.id)
  }
}

const send = (rt: Runtime, t: Transport["Service"], events: ReadonlyArray<ReturnType<typeof envelope>>) =>
  rt
    .runPromise(t.sendAll(events.map((event) => ({ event }))))
    .then((o) => expect(o).toEqual({ sent: events.length }))

describe("shared feed", () => {
  it("500 subscribers of one address cost one consumer on the server; each gets every event once, in order; closing them all deletes it", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const subject = `bus.${tenant}.${channel}`
      // Another address in the same process gets its own feed.
      const other = new Collected(rt, t.subscribe({ tenant, channel: `${channel}x`, from: "beginning" }))
      const head = await rt.runPromise(t.head({ tenant, channel }))
      const subs = Array.from(
        { length: 500 },
        () => new Collected(rt, t.subscribe({ tenant, channel, from: head })),
      )
      await waitFor(async () => (await consumersOn(subject)) === 1, 10_000, "the feed's consumer")
      const events = Array.from({ length: 50 }, (_, i) => envelope(tenant, channel, { i }))
      await send(rt, t, events)
      await waitFor(() => subs.every((s) => s.events.length >= 50), 20_000, "every subscriber")
      const want = events.map((e) => e.id)
      let delivered = 0
      for (const s of subs) {
        expect(s.error).toBeUndefined()
        expect(s.ids).toEqual(want)
        delivered += s.events.length
      }
      console.log(
        `nats shared feed: 500 subscribers, 50 events: delivered ${delivered}, consumers ${await consumersOn(subject)}`,
      )
      expect(delivered).toBe(500 * 50)
      expect(await consumersOn(subject)).toBe(1)
      expect(await consumersOn(`${subject}x`)).toBe(1)
      await Promise.all(subs.map((s) => rt.runPromise(Fiber.interrupt(s.fiber))))
      await waitFor(async () => (await consumersOn(subject)) === 0, 10_000, "the feed's consumer to go")
      expect(await consumersOn(`${subject}x`)).toBe(1)
      await rt.runPromise(Fiber.interrupt(other.fiber))
    }))

  it("late subscribers with a cursor get exactly the events after it: from the feed's recent items, by direct reads (a short gap), through a temporary consumer (a long one)", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const subject = `bus.${tenant}.${channel}`
      const live = new Collected(rt, t.subscribe({ tenant, channel, from: "beginning" }))
      const before = Array.from({ length: 700 }, (_, i) => envelope(tenant, channel, { i }))
      // Interleaved with another channel's events: the subject's stream sequences have gaps.
      for (let k = 0; k < 7; k++) {
        await send(rt, t, before.slice(k * 100, (k + 1) * 100))
        await send(rt, t, [envelope(tenant, `${channel}y`, { k })])
      }
      await waitFor(() => live.events.length >= 700, 15_000, "the live subscriber")
      const want = before.map((e) => e.id)
      expect(live.ids).toEqual(want)
      // In this process the feed holds its last 512 events: a cursor among them needs no read.
      // In another process (a second transport) a cursor 5 events behind its feed's start is
      // read by sequence, one 700 back through a temporary consumer.
      const other = ManagedRuntime.make(natsTransport({ servers: server.url }))
      try {
        const t2 = await other.runPromise(Transport.use((x) => Effect.succeed(x)))
        // The other process's feed starts at the stream's end (its first subscriber starts
        // there), so a cursor 5 events back is read by sequence.
        const fresh = new Collected(
          other,
          t2.subscribe({ tenant, channel, from: await other.runPromise(t2.head({ tenant, channel })) }),
        )
        await waitFor(async () => (await consumersOn(subject)) === 2, 10_000, "the other process's feed")
        const late = [
          { k: 699, sub: fresh },
          {
            k: 650,
            sub: new Collected(rt, t.subscribe({ tenant, channel, from: live.events[650]!.cursor })),
          },
          {
            k: 694,
            sub: new Collected(other, t2.subscribe({ tenant, channel, from: live.events[694]!.cursor })),
          },
          {
            k: 0,
            sub: new Collected(other, t2.subscribe({ tenant, channel, from: live.events[0]!.cursor })),
          },
        ]
        const after = Array.from({ length: 20 }, (_, i) => envelope(tenant, channel, { after: i }))
        await send(rt, t, after.slice(0, 10))
        await send(rt, t, after.slice(10))
        const all = [...want, ...after.map((e) => e.id)]
        await waitFor(
          () =>
            late.every(({ k, sub }) => sub.events.length >= all.length - k - 1) &&
            live.events.length >= all.length,
          20_000,
          "the late subscribers",
        )
        for (const { k, sub } of late) {
          expect(sub.error).toBeUndefined()
          expect(sub.ids, `cursor of event ${k}`).toEqual(all.slice(k + 1))
          const seqs = sub.events.map((e) => decodeCursor(e.cursor) as number)
          expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
        }
        expect(live.ids).toEqual(all)
        console.log(
          `nats late subscribers: ${late.map(({ k, sub }) => `from #${k}: ${sub.events.length}`).join(", ")} (all ${all.length})`,
        )
        // The catch-up consumer is gone: one feed consumer per process is left.
        await waitFor(async () => (await consumersOn(subject)) === 2, 10_000, "one consumer per process")
        for (const { sub } of late.slice(1).filter((l) => l.k !== 650))
          await other.runPromise(Fiber.interrupt(sub.fiber))
      } finally {
        await other.dispose()
      }
      await waitFor(
        async () => (await consumersOn(subject)) === 1,
        10_000,
        "the other process's consumer to go",
      )
      await rt.runPromise(Fiber.interrupt(live.fiber))
    }))

  it("a subscriber that stops reading is bounded: dropped from the feed, the others unaffected, and it resumes without gap or duplicate", async () => {
    setFlagsFromString("--expose_gc")
    const gc = runInNewContext("gc") as () => void
    await withTransport({ subscriberBuffer: 64 }, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const head = await rt.runPromise(t.head({ tenant, channel }))
      const fast = new Collected(rt, t.subscribe({ tenant, channel, from: head }), true)
      // The stalled one: an iterator nobody pulls from after the first event.
      const iterator = Stream.toAsyncIterable(t.subscribe({ tenant, channel, from: head }))[
        Symbol.asyncIterator
      ]()
      const firstPull = iterator.next()
      const pad = "x".repeat(16 * 1024)
      const total = 4_000
      // Only the ids are kept here: a sent envelope carries its own encoding (16 KiB each),
      // which must not count as the subscribers' memory.
      const ids: Array<string> = []
      const batch = (from: number, to: number) =>
        Array.from({ length: to - from }, (_, k) => {
          const e = envelope(tenant, channel, { i: from + k, pad })
          ids.push(e.id)
          return e
        })
      await send(rt, t, batch(0, 1))
      const first = await firstPull
      expect(first.done).toBe(false)
      gc()
      const heapBefore = process.memoryUsage().heapUsed
      // 64 MB of events flow while it does not read.
      for (let i = 1; i < total; i += 500) await send(rt, t, batch(i, Math.min(total, i + 500)))
      await waitFor(() => fast.events.length >= total, 30_000, "the fast subscriber")
      expect(fast.ids).toEqual(ids)
      gc()
      const grown = process.memoryUsage().heapUsed - heapBefore
      // Held: the feed's shared log (64 events, at least its newest page of at most 256) and
      // at most one page in the stalled iterator, ~1-5 MB; unbounded it would be the whole 64 MB.
      console.log(
        `nats stalled subscriber: ${total} events of 16 KiB flowed; heap grew ${(grown / 2 ** 20).toFixed(1)} MiB`,
      )
      expect(grown).toBeLessThan(12 * 2 ** 20)
      // It reads again: everything after its first event, once, in order.
      const got: Array<string> = [(first.value as DeliveredEvent).id]
      while (got.length < total) {
        const next = await iterator.next()
        if (next.done) break
        got.push(next.value.id)
      }
      expect(got.length).toBe(total)
      expect(new Set(got).size).toBe(total)
      expect(got).toEqual(ids)
      // And it is back on the live feed.
      const tail = envelope(tenant, channel, { tail: true })
      await send(rt, t, [tail])
      expect((await iterator.next()).value?.id).toBe(tail.id)
      await iterator.return?.()
      await rt.runPromise(Fiber.interrupt(fast.fiber))
    })
  })
})

describe("the Promise facade on NATS", () => {
  it("pulls from the feed's shared log: a subscriber that never reads while 30,000 events flow holds at most one page, the log stays within its window, the others get everything meanwhile, and it resumes without gap or repeat", async () => {
    const outbox = memoryOutbox()
    const window = 1024
    const bus = await createBus({
      outbox,
      transport: { use: "nats", broker: nats({ servers: server.url, subscriberBuffer: window }) },
      env: false,
    })
    try {
      const transport = await bus.runtime.runPromise(Transport.use((t) => Effect.succeed(t)))
      // The facade's direct path: no fiber, stream or queue per subscription.
      expect(feedCursorOf(transport)).toBeDefined()
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const fastIds: Array<string> = []
      const fast = bus.subscribe({ tenant, channel })
      const reading = (async () => {
        for await (const e of fast) fastIds.push(e.id)
      })()
      const stalled = bus.subscribe({ tenant, channel })
      await Promise.all([fast.ready, stalled.ready])
      const ids: Array<string> = []
      const pad = "x".repeat(300)
      const publish = async (count: number) => {
        await outbox.transaction(async (tx) => {
          const inputs = Array.from({ length: count }, (_, i) => ({
            tenant,
            channel,
            type: "fan.bounded",
            data: { i: ids.length + i, pad },
          }))
          const receipt = await bus.publish(tx, inputs)
          ids.push(...receipt.ids)
        })
      }
      const iterator = stalled[Symbol.asyncIterator]()
      await publish(1)
      const first = await iterator.next()
      expect(first.value?.id).toBe(ids[0])
      // 30,000 events flow while it does not read.
      const total = 30_000
      while (ids.length < total + 1) await publish(1_000)
      await waitFor(() => fastIds.length >= ids.length, 120_000, "the reading subscriber")
      expect(fastIds).toEqual(ids)
      const stats = feedStatsOf(transport)?.get(`${tenant}/${channel}`)
      console.log(
        `nats facade, stalled subscriber: ${total} events flowed; it holds ${stalled.buffered}, the log ${stats?.events} events in ${stats?.pages} pages`,
      )
      // What the process holds for it: the rest of one page of the shared log (≤ 256 events).
      expect(stalled.buffered).toBeLessThanOrEqual(256)
      expect(stats).toBeDefined()
      expect(stats!.events).toBeLessThanOrEqual(window)
      // It reads again: everything after its first event, once, in order (from the stream).
      const got: Array<string> = [first.value!.id]
      while (got.length < ids.length) {
        const next = await iterator.next()
        if (next.done) break
        got.push(next.value.id)
      }
      expect(got).toEqual(ids)
      // And it is back on the live feed.
      await publish(1)
      expect((await iterator.next()).value?.id).toBe(ids[ids.length - 1])
      await stalled.close()
      await fast.close()
      await reading
    } finally {
      await bus.close()
    }
  }, 300_000)
})
