import { describe, expect, it } from "vitest"
import { memoryBroker, splitCursor } from "../src/adapter.js"
import { type Bus, createBus, type DeliveredEvent, type MemoryOutbox, memoryOutbox } from "../src/index.js"

/**
 * The transport flip on the in-memory reference: the same outbox, first delivered straight
 * (memory ≈ postgres-notify), then through the relay to a broker (memoryBroker ≈ NATS /
 * Redis), then straight again. Subscribers resume from their cursors, groups from their
 * positions and inboxes. The real-server version is packages/cli/test/flip.
 */

const tenant = "acme"
const channel = "orders"

const until = async (condition: () => boolean, what: string, timeoutMs = 5_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** One application run: the same code each time; only `transport` differs. */
const start = (outbox: MemoryOutbox, broker: MemoryOutbox, transport: "memory" | "memory-broker") =>
  createBus({
    outbox,
    transport: { use: transport, broker: memoryBroker(broker) },
    env: false,
    relay: { maxIdleMs: 20 },
  })

interface Run {
  readonly bus: Bus
  readonly received: Array<DeliveredEvent>
  readonly handled: Array<string>
  cursor: string | undefined
  stop(): Promise<void>
}

const consumers = async (bus: Bus, from: string | undefined, handled: Array<string>): Promise<Run> => {
  const received: Array<DeliveredEvent> = []
  const sub = bus.subscribe({ tenant, channel, from: from ?? "beginning" })
  await sub.ready
  const run: Run = {
    bus,
    received,
    handled,
    cursor: from,
    stop: async () => {
      await Promise.all([sub.close(), consumer.close()])
      await bus.close()
    },
  }
  void (async () => {
    for await (const e of sub) {
      received.push(e)
      run.cursor = e.cursor
    }
  })()
  const consumer = bus.consume({ tenant, channel, group: "mailer" }, (e) => {
    handled.push(e.id)
  })
  return run
}

const publish = async (bus: Bus, outbox: MemoryOutbox, n: number, offset: number) => {
  for (let i = 0; i < n; i += 3) {
    await outbox.transaction(async (tx) => {
      for (let k = i; k < Math.min(n, i + 3); k++) {
        await bus.publish(tx, { tenant, channel, type: "order.paid", data: { i: offset + k } })
      }
    })
  }
}

describe("transport flip (in memory)", () => {
  it("outbox → broker → outbox: subscribers resume with no gap, groups never handle twice", async () => {
    const outbox = memoryOutbox()
    const broker = memoryOutbox()
    const handled: Array<string> = []

    // 1. Straight from the outbox.
    let bus = await start(outbox, broker, "memory")
    let run = await consumers(bus, undefined, handled)
    await publish(bus, outbox, 30, 0)
    await until(() => run.received.length === 30 && handled.length === 30, "phase 1")
    const phase1 = run.received.map((e) => e.id)
    const cursor1 = run.cursor!
    expect(cursor1.startsWith("mem2:")).toBe(true)
    await run.stop()

    // Published while nothing consumes: must reach everyone after the flip.
    bus = await start(outbox, broker, "memory")
    await publish(bus, outbox, 6, 30)
    await bus.close()

    // 2. The same code on the broker: the relay forwards the whole outbox.
    bus = await start(outbox, broker, "memory-broker")
    run = await consumers(bus, cursor1, handled)
    await publish(bus, outbox, 30, 36)
    await until(() => run.received.length === 36 && handled.length === 66, "phase 2")
    const phase2 = run.received.map((e) => e.id)
    const cursor2 = run.cursor!
    expect(splitCursor(cursor2).frontier).toBeDefined()
    await run.stop()

    // 3. Back to the outbox.
    bus = await start(outbox, broker, "memory")
    run = await consumers(bus, cursor2, handled)
    await publish(bus, outbox, 9, 66)
    await until(() => handled.length === 75, "phase 3 handlers")
    await until(() => run.received.filter((e) => !phase2.includes(e.id)).length === 9, "phase 3")
    const phase3 = run.received.map((e) => e.id)
    await run.stop()

    const all = outbox.committed().map((e) => e.id)
    expect(all).toHaveLength(75)
    // No gap and no duplicate into the broker; no gap back out of it.
    expect(new Set([...phase1, ...phase2]).size).toBe(phase1.length + phase2.length)
    expect(new Set([...phase1, ...phase2, ...phase3])).toEqual(new Set(all))
    // Drained when it stopped: the last event's frontier covered everything it had seen.
    expect(phase3.filter((id) => phase2.includes(id))).toEqual([])
    // Every event handled exactly once by the group across the three runs.
    expect(handled).toHaveLength(75)
    expect(new Set(handled)).toEqual(new Set(all))
  })

  it("a broker given an outbox cursor skips exactly what it covers", async () => {
    const outbox = memoryOutbox()
    const broker = memoryOutbox()
    const bus = await start(outbox, broker, "memory-broker")
    await publish(bus, outbox, 12, 0)
    const cursor = `mem1:${outbox.epoch}:7`
    const got: Array<number> = []
    const sub = bus.subscribe({ tenant, channel, from: cursor })
    for await (const e of sub) {
      got.push((e.data as { i: number }).i)
      if (got.length === 5) break
    }
    expect(got).toEqual([7, 8, 9, 10, 11])
    await bus.close()
  })
})
