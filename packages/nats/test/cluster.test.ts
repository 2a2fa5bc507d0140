import { setTimeout as delay } from "node:timers/promises"
// The counting and order checks of the conformance suite, so this fault is judged the same way.
import { orderViolations, Tally } from "@bus/conformance"
import { type Bus, createBus, memoryOutbox } from "@bus/core"
import { uuidv7 } from "@bus/core/adapter"
import { type NatsClusterHandle, startNatsCluster } from "@bus/test-infra"
import { jetstreamManager } from "@nats-io/jetstream"
import type { NatsConnection } from "@nats-io/transport-node"
import { Effect, ManagedRuntime } from "effect"
import { afterAll, beforeAll, expect, it } from "vitest"
import { natsTransport } from "../src/adapter.js"
import { nats } from "../src/index.js"
import { plainConnection, storedIds, uniqueName, waitFor } from "./support.js"

let cluster: NatsClusterHandle
let nc: NatsConnection

beforeAll(async () => {
  cluster = await startNatsCluster()
  nc = await plainConnection(cluster.urls)
}, 180_000)

afterAll(async () => {
  await nc?.close()
  await cluster?.stop()
})

/** Index of the node that leads `stream` (server names end in -n<index+1>). */
const leaderIndex = async (stream: string): Promise<number> => {
  const info = await (await jetstreamManager(nc)).streams.info(stream)
  const m = /-n(\d+)$/.exec(info.cluster?.leader ?? "")
  if (m === null) throw new Error(`no leader for ${stream}: ${JSON.stringify(info.cluster)}`)
  return Number(m[1]) - 1
}

it("R3 stream on a 3-node cluster: the stream leader, which the bus is connected to, SIGKILLed mid-stream and restarted later: 0 lost, 0 duplicates", async () => {
  const outbox = memoryOutbox()
  let bus: Bus | undefined
  let stop = false
  let producer: Promise<void> = Promise.resolve()
  try {
    // Create the R3 stream first, to connect the bus to its leader: killing that node then
    // drops the bus's connection and forces a leader election at once.
    const setup = ManagedRuntime.make(natsTransport({ servers: cluster.urls, stream: { replicas: 3 } }))
    await setup.runPromise(Effect.void)
    await setup.dispose()
    const leader = await leaderIndex("BUS")
    const servers = [cluster.urls[leader]!, ...cluster.urls.filter((_, i) => i !== leader)]
    bus = await createBus({
      outbox,
      transport: {
        use: "nats",
        broker: nats({
          servers,
          connectOptions: { noRandomize: true },
          stream: { replicas: 3 },
          ackWaitMs: 5_000,
        }),
      },
      env: false,
    })
    const b = bus
    const tenant = uniqueName("t")
    const channel = uniqueName("c")
    const handled = new Tally()
    const subscribed = new Tally()
    const consumer = b.consume(
      { tenant, channel, group: "cluster", initialBackoffMs: 50, maxBackoffMs: 1_000 },
      (e) => handled.add(e),
    )
    const sub = b.subscribe({ tenant, channel, from: "beginning" })
    const reading = (async () => {
      for await (const e of sub) subscribed.add(e)
    })()

    const confirmed = new Set<string>()
    const ambiguous = new Set<string>()
    producer = (async () => {
      for (let tx = 0; !stop; tx++) {
        const inputs = Array.from({ length: 10 }, (_, seq) => ({
          tenant,
          channel,
          type: "cluster.fault",
          data: { tx: `f${tx}`, seq },
          id: uuidv7(),
        }))
        try {
          await outbox.transaction((t) => b.publish(t, inputs))
          for (const e of inputs) confirmed.add(e.id)
        } catch {
          for (const e of inputs) ambiguous.add(e.id)
        }
        // About 250 events/s: below what the relay forwards to an R3 stream on one channel here.
        await delay(40)
      }
    })()

    await waitFor(
      () => confirmed.size >= 200 && handled.counts.size >= 100 && subscribed.counts.size >= 100,
      30_000,
      "steady traffic before the fault",
    )
    const victim = await leaderIndex("BUS")
    expect(victim, "the bus is connected to the stream leader").toBe(leader)
    const before = confirmed.size
    await cluster.nodes[victim]!.kill()
    await waitFor(() => confirmed.size >= before + 300, 120_000, "publishing to go on with a node down")
    await waitFor(
      () => handled.missing(confirmed).length === 0 && subscribed.missing(confirmed).length === 0,
      120_000,
      () =>
        `deliveries with a node down (handler missing ${handled.missing(confirmed).length}, subscriber missing ${subscribed.missing(confirmed).length})`,
    )
    const whileDown = confirmed.size
    await cluster.nodes[victim]!.restart()
    await waitFor(() => confirmed.size >= whileDown + 300, 120_000, "publishing after the node is back")
    stop = true
    await producer
    await waitFor(
      () => handled.missing(confirmed).length === 0 && subscribed.missing(confirmed).length === 0,
      120_000,
      () =>
        `every committed event (handler missing ${handled.missing(confirmed).length}, subscriber missing ${subscribed.missing(confirmed).length} of ${confirmed.size})`,
    )
    await waitFor(
      async () => (await b.runtime.runPromise(outbox.store.relay.backlog)) === 0,
      30_000,
      "the relay's backlog",
    )
    const stored = await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)
    const known = (id: string) => confirmed.has(id) || ambiguous.has(id)
    console.log(
      `nats fault "cluster R3: stream leader n${victim + 1} (the bus's server) SIGKILLed, restarted later": sent=${confirmed.size} delivered=${[...confirmed].filter((id) => handled.counts.has(id)).length} lost=${handled.missing(confirmed).length} duplicates=${handled.duplicates.length} subscriber: lost=${subscribed.missing(confirmed).length} duplicates=${subscribed.duplicates.length}; stream stored=${stored.count} distinct=${new Set(stored.ids).size}; new leader n${(await leaderIndex("BUS")) + 1}`,
    )
    expect(handled.missing(confirmed)).toEqual([])
    expect(handled.duplicates).toEqual([])
    expect(subscribed.missing(confirmed)).toEqual([])
    expect(subscribed.duplicates).toEqual([])
    expect(handled.events.filter((e) => !known(e.id))).toEqual([])
    expect(orderViolations(handled.events)).toEqual([])
    expect(orderViolations(subscribed.events)).toEqual([])
    expect(stored.count, "no duplicates in the stream").toBe(new Set(stored.ids).size)
    await consumer.close()
    await sub.close()
    await reading
  } finally {
    stop = true
    await producer
    await bus?.close()
  }
}, 600_000)
