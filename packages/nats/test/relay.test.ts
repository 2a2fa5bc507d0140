import { type Bus, createBus, type DeliveredEvent, type MemoryOutbox, memoryOutbox } from "@bus/core"
import { type Outbox, OutboxReader } from "@bus/core/adapter"
import { type ServerHandle, startNats } from "@bus/test-infra"
import { Effect, Layer } from "effect"
import { afterAll, beforeAll, expect, it } from "vitest"
import { nats } from "../src/index.js"
import { KillableRelay, plainConnection, storedIds, uniqueName, waitFor } from "./support.js"

let server: ServerHandle

beforeAll(async () => {
  server = await startNats()
})

afterAll(async () => {
  await server?.stop()
})

it("a relay killed mid-batch and restarted re-sends the batch: the stream stores every event once, handlers see each once", async () => {
  const outbox = memoryOutbox()
  const relay = new KillableRelay(outbox, { servers: server.url }, { leaseMs: 1_000, batchSize: 100 })
  const bus = await createBus({
    outbox,
    transport: { use: "nats", broker: nats({ servers: server.url }) },
    env: false,
    relay: false,
  })
  const nc = await plainConnection(server.url)
  try {
    await relay.start()
    const tenant = uniqueName("t")
    const channel = uniqueName("c")
    const subscribed: Array<DeliveredEvent> = []
    const handled: Array<string> = []
    const sub = bus.subscribe({ tenant, channel, from: "beginning" })
    const reading = (async () => {
      for await (const e of sub) subscribed.push(e)
    })()
    const consumer = bus.consume({ tenant, channel, group: "g" }, (e) => {
      handled.push(e.id)
    })

    // Armed before the commit: the relay's first batch holds all 50 rows, and dies after 20 sends.
    const killed = relay.killMidBatch(20)
    const { ids } = await outbox.transaction((tx) =>
      bus.publish(
        tx,
        Array.from({ length: 50 }, (_, seq) => ({
          tenant,
          channel,
          type: "relay.kill",
          data: { tx: "t0", seq },
        })),
      ),
    )
    await killed
    await waitFor(
      () => handled.length >= 50 && subscribed.length >= 50,
      30_000,
      () => `all 50 (handled ${handled.length})`,
    )
    await waitFor(
      async () => (await bus.runtime.runPromise(outbox.store.relay.backlog)) === 0,
      10_000,
      "an empty backlog",
    )

    const stored = await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)
    const duplicatesInStream = stored.count - new Set(stored.ids).size
    console.log(
      `nats fault "relay killed mid-batch (relayBatch)": sent=${ids.length} stored=${stored.count} resent=${relay.resends} delivered=${new Set(handled).size} duplicates=${handled.length - new Set(handled).size} duplicates in stream=${duplicatesInStream}`,
    )
    expect(relay.kills).toBe(1)
    expect(relay.resends, "the restarted relay re-sent what the killed one had sent").toBe(20)
    expect(stored.count).toBe(50)
    expect(new Set(stored.ids)).toEqual(new Set(ids))
    expect(handled).toEqual(ids)
    expect(subscribed.map((e) => e.id)).toEqual(ids)
    await consumer.close()
    await sub.close()
    await reading
  } finally {
    await bus.close()
    await relay.stop()
    await nc.close()
  }
})

/**
 * A bus on NATS over `outbox` (as the bus sees it: `seen`, by default the same) whose relay
 * is not running yet, and `publish`, which commits `n` events to one fresh address and
 * returns their ids: events committed before `relay.start()` reach the stream late.
 */
const withLaggingRelay = async (
  outbox: MemoryOutbox,
  seen: Outbox,
  fn: (s: {
    readonly bus: Bus
    readonly relay: KillableRelay
    readonly tenant: string
    readonly channel: string
    readonly publish: (tx: string, n: number) => Promise<ReadonlyArray<string>>
  }) => Promise<void>,
) => {
  const relay = new KillableRelay(outbox, { servers: server.url }, { leaseMs: 1_000 })
  const bus = await createBus({
    outbox: seen,
    transport: { use: "nats", broker: nats({ servers: server.url }) },
    env: false,
    relay: false,
  })
  try {
    const tenant = uniqueName("t")
    const channel = uniqueName("c")
    const publish = async (tx: string, n: number) => {
      const inputs = Array.from({ length: n }, (_, seq) => ({
        tenant,
        channel,
        type: "now.test",
        data: { tx, seq },
      }))
      return (await outbox.transaction((t) => bus.publish(t, inputs))).ids
    }
    await fn({ bus, relay, tenant, channel, publish })
  } finally {
    await bus.close()
    await relay.stop()
  }
}

it('"now" leaves out events committed before it that the relay sends later, and keeps everything committed after `ready`', async () => {
  const outbox = memoryOutbox()
  await withLaggingRelay(outbox, outbox, async ({ bus, relay, tenant, channel, publish }) => {
    // Committed before subscribe(), still in the outbox: no relay runs yet.
    const before = await publish("before", 5)
    const sub = bus.subscribe({ tenant, channel, from: "now" })
    const start = await sub.ready
    expect(start).toMatch(/^nats2:[0-9a-f]{8}\.[0-9a-f]{8}\.\d+\+\d+\+/)
    const after = await publish("after", 5)
    const got: Array<DeliveredEvent> = []
    const reading = (async () => {
      for await (const e of sub) got.push(e)
    })()
    // The relay now sends the old events first, then the new ones.
    await relay.start()
    await waitFor(() => after.every((id) => got.some((e) => e.id === id)), 15_000, "the events after ready")
    const sentinel = (await publish("sentinel", 1))[0]!
    await waitFor(() => got.some((e) => e.id === sentinel), 15_000, "the sentinel")
    console.log(
      `nats "now" with a lagging relay: before=${before.length} (delivered ${got.filter((e) => before.includes(e.id)).length}) after=${after.length} (delivered ${got.filter((e) => after.includes(e.id)).length})`,
    )
    expect(got.map((e) => e.id)).toEqual([...after, sentinel])
    // A resumed subscription from a delivered (plain) cursor reads on from there.
    const resumed = bus.subscribe({ tenant, channel, from: got[1]!.cursor })
    const rest: Array<string> = []
    for await (const e of resumed) {
      rest.push(e.id)
      if (rest.length === 4) break
    }
    expect(rest).toEqual([...after.slice(2), sentinel])
    await sub.close()
    await reading
  })
})

it('1,000 subscribers from "now" in one burst while the relay lags: each leaves out what was committed before and gets everything after, and they share the outbox reads that tell the two apart (not one read each)', async () => {
  const outbox = memoryOutbox()
  // The outbox as the bus sees it, with its reads counted.
  let reads = 0
  const counted: Outbox = {
    transport: outbox.transport,
    layers: (choice) => {
      const layers = outbox.layers(choice)
      // The reader wrapped, over (and in front of) every service the outbox provides.
      const reader = Layer.effect(
        OutboxReader,
        Effect.map(OutboxReader, (s) =>
          OutboxReader.of({
            ...s,
            read: (...args) => {
              reads++
              return s.read(...args)
            },
          }),
        ),
      )
      const store = reader.pipe(Layer.provideMerge(layers.outbox))
      return { ...layers, outbox: store }
    },
  }
  await withLaggingRelay(outbox, counted, async ({ bus, relay, tenant, channel, publish }) => {
    // Committed before the subscriptions, still in the outbox: no relay runs yet.
    const before = await publish("before", 5)
    const n = 1_000
    const subs = Array.from({ length: n }, () => bus.subscribe({ tenant, channel, from: "now" }))
    const got = subs.map(() => [] as Array<string>)
    const reading = subs.map(async (sub, i) => {
      for await (const e of sub) got[i]!.push(e.id)
    })
    await Promise.all(subs.map((s) => s.ready))
    const after = await publish("after", 5)
    const readsBefore = reads
    // The relay now sends the old events first, then the new ones.
    await relay.start()
    await waitFor(
      () => got.every((g) => g.length >= after.length),
      30_000,
      () => "every subscriber's events",
    )
    const sentinel = await publish("sentinel", 1)
    await waitFor(() => got.every((g) => g.length >= after.length + 1), 30_000, "the sentinel everywhere")
    const delivering = reads - readsBefore
    console.log(
      `nats "now" burst with a lagging relay: ${n} subscribers, ${before.length} events before and ${after.length} after; outbox reads while delivering: ${delivering}`,
    )
    for (const g of got) expect(g).toEqual([...after, ...sentinel])
    // Telling the relay's backlog apart is shared by the subscribers of one head: a few reads
    // for the burst, never one per subscriber.
    // (The reads are counted: telling them apart needs at least one.)
    expect(delivering).toBeGreaterThan(0)
    expect(delivering).toBeLessThan(50)
    await Promise.all(subs.map((s) => s.close()))
    await Promise.all(reading)
  })
})
