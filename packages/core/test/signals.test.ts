/**
 * AbortSignals of the Promise facade: a consume handler's signal fires when its member has
 * stopped and the grace period is over (and its event then comes again, at least once);
 * `subscribe` and `consume` stop on the caller's signal, promptly and cleanly, also when it
 * was aborted before they started.
 */
import { describe, expect, it } from "vitest"
import { memoryBroker } from "../src/adapter.js"
import { createBus, type MemoryOutbox, memoryOutbox } from "../src/index.js"
import { within } from "./support.js"

const makeBus = (outbox: MemoryOutbox, transport: "memory" | "memory-broker", broker = memoryOutbox()) =>
  createBus({
    outbox,
    transport: { use: transport, broker: memoryBroker(broker) },
    env: false,
    relay: { maxIdleMs: 20 },
  })

const waitUntil = async (condition: () => boolean, what: string, timeoutMs = 5_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** A handler that blocks until its signal aborts, then rejects with the signal's reason. */
const untilAborted = (signal: AbortSignal) =>
  new Promise<void>((_, reject) => {
    if (signal.aborted) return reject(signal.reason)
    signal.addEventListener("abort", () => reject(signal.reason), { once: true })
  })

describe("a consume handler's signal", () => {
  for (const transport of ["memory", "memory-broker"] as const) {
    it(`${transport}: fires when its consumer closes (after stopGraceMs); the event is then handled by the next member`, async () => {
      const outbox = memoryOutbox()
      const broker = memoryOutbox()
      const bus = await makeBus(outbox, transport, broker)
      try {
        const calls: Array<{ id: string; attempt: number; aborted: boolean }> = []
        let released = 0
        const first = bus.consume(
          { tenant: "acme", channel: "jobs", group: "workers", stopGraceMs: 50 },
          async (event, attempt, signal) => {
            calls.push({ id: event.id, attempt, aborted: signal.aborted })
            await untilAborted(signal).finally(() => released++)
          },
        )
        const { ids } = await outbox.transaction((tx) =>
          bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job", data: { n: 1 } }),
        )
        await waitUntil(() => calls.length === 1, "the first handler call")
        // Close returns once the grace period is over and the handler was let go: bounded.
        await within(first.close(), 5_000, "close of a consumer whose handler waits on its signal")
        await waitUntil(() => released === 1, "the handler's release by its signal")
        expect(calls).toEqual([{ id: ids[0], attempt: 1, aborted: false }])

        // At least once: the unacknowledged event goes to the group's next member.
        const handled: Array<string> = []
        const second = bus.consume({ tenant: "acme", channel: "jobs", group: "workers" }, (event) => {
          handled.push(event.id)
        })
        await waitUntil(() => handled.length === 1, "the redelivery to the next member")
        await second.close()
        expect(handled).toEqual(ids)
      } finally {
        await bus.close()
      }
    })
  }

  it("fires when the bus closes", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    let reason: unknown
    let started = false
    bus.consume(
      { tenant: "acme", channel: "jobs", group: "g", stopGraceMs: 20 },
      async (_event, _attempt, signal) => {
        started = true
        await untilAborted(signal).catch((e: unknown) => {
          reason = e
          throw e
        })
      },
    )
    await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job" }))
    await waitUntil(() => started, "the handler's start")
    await within(bus.close(), 5_000, "bus close")
    await waitUntil(() => reason !== undefined, "the abort")
    expect(reason).toBeInstanceOf(Error)
  })

  it("does not fire for a handler that finishes within the grace period (its event is settled)", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      const signals: Array<AbortSignal> = []
      let finished = 0
      const consumer = bus.consume(
        { tenant: "acme", channel: "jobs", group: "g", stopGraceMs: 2_000 },
        async (_event, _attempt, signal) => {
          signals.push(signal)
          await new Promise((r) => setTimeout(r, 100))
          finished++
        },
      )
      await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job" }))
      await waitUntil(() => signals.length === 1, "the handler's start")
      await consumer.close()
      expect(finished).toBe(1)
      expect(signals[0]!.aborted).toBe(false)
      const again: Array<string> = []
      const next = bus.consume({ tenant: "acme", channel: "jobs", group: "g" }, (e) => {
        again.push(e.id)
      })
      await new Promise((r) => setTimeout(r, 150))
      await next.close()
      expect(again).toEqual([])
    } finally {
      await bus.close()
    }
  })
})

describe("consume({ signal })", () => {
  it("stops the consumer when aborted: done resolves and no handler runs after", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      const controller = new AbortController()
      const handled: Array<number> = []
      const consumer = bus.consume(
        { tenant: "acme", channel: "jobs", group: "g", signal: controller.signal },
        (event) => {
          handled.push((event.data as { n: number }).n)
        },
      )
      await outbox.transaction((tx) =>
        bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job", data: { n: 1 } }),
      )
      await waitUntil(() => handled.length === 1, "the first event")
      controller.abort()
      await within(consumer.done, 5_000, "done after abort")
      await outbox.transaction((tx) =>
        bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job", data: { n: 2 } }),
      )
      await new Promise((r) => setTimeout(r, 100))
      expect(handled).toEqual([1])
    } finally {
      await bus.close()
    }
  })

  it("aborted before it starts: never runs the handler, done is resolved", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "jobs", type: "job" }))
      let calls = 0
      const consumer = bus.consume(
        { tenant: "acme", channel: "jobs", group: "g", signal: AbortSignal.abort() },
        () => {
          calls++
        },
      )
      await within(consumer.done, 1_000, "done")
      await new Promise((r) => setTimeout(r, 50))
      expect(calls).toBe(0)
      await consumer.close()
    } finally {
      await bus.close()
    }
  })

  it("await using closes the consumer at the end of the block", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      let done: Promise<void> | undefined
      {
        await using consumer = bus.consume({ tenant: "acme", channel: "jobs", group: "g" }, () => {})
        done = consumer.done
      }
      await within(done, 1_000, "done after the block")
    } finally {
      await bus.close()
    }
  })
})

describe("subscribe({ signal })", () => {
  for (const transport of ["memory", "memory-broker"] as const) {
    it(`${transport}: aborting ends a waiting for await promptly, without an error`, async () => {
      const outbox = memoryOutbox()
      const bus = await makeBus(outbox, transport)
      try {
        const controller = new AbortController()
        const subscription = bus.subscribe({ tenant: "acme", channel: "news", signal: controller.signal })
        await subscription.ready
        const seen: Array<unknown> = []
        const loop = (async () => {
          for await (const event of subscription) {
            seen.push(event.data)
            if (seen.length === 1) setTimeout(() => controller.abort(), 20)
          }
          return "ended"
        })()
        await outbox.transaction((tx) =>
          bus.publish(tx, { tenant: "acme", channel: "news", type: "n", data: 1 }),
        )
        // The loop now waits for an event that never comes; the abort ends it.
        expect(await within(loop, 5_000, "the loop's end after abort")).toBe("ended")
        expect(seen).toEqual([1])
        // Delivery stopped: a later event is not buffered for the closed subscription.
        await outbox.transaction((tx) =>
          bus.publish(tx, { tenant: "acme", channel: "news", type: "n", data: 2 }),
        )
        await new Promise((r) => setTimeout(r, 50))
        expect(subscription.buffered).toBe(0)
      } finally {
        await bus.close()
      }
    })
  }

  for (const transport of ["memory", "memory-broker"] as const) {
    it(`${transport}: aborted while it starts: ready settles (BusClosed if it had not resolved) and the loop ends`, async () => {
      const outbox = memoryOutbox()
      const bus = await makeBus(outbox, transport)
      try {
        await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "news", type: "n" }))
        const controller = new AbortController()
        const subscription = bus.subscribe({
          tenant: "acme",
          channel: "news",
          from: "beginning",
          signal: controller.signal,
        })
        controller.abort()
        const settled = await within(
          subscription.ready.then(
            () => "resolved",
            (e: unknown) => (e as { _tag?: string })._tag,
          ),
          2_000,
          "ready after an abort during start",
        )
        expect(["resolved", "BusClosed"]).toContain(settled)
        let n = 0
        for await (const _ of subscription) n++
        expect(n).toBe(0)
      } finally {
        await bus.close()
      }
    })
  }

  it("aborted before it starts: the loop ends at once and ready rejects with BusClosed", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "news", type: "n" }))
      const subscription = bus.subscribe({
        tenant: "acme",
        channel: "news",
        from: "beginning",
        signal: AbortSignal.abort(),
      })
      await expect(subscription.ready).rejects.toMatchObject({ _tag: "BusClosed" })
      let n = 0
      for await (const _ of subscription) n++
      expect(n).toBe(0)
    } finally {
      await bus.close()
    }
  })

  it("await using closes the subscription at the end of the block", async () => {
    const outbox = memoryOutbox()
    const bus = await makeBus(outbox, "memory")
    try {
      let iterator: AsyncIterator<unknown> | undefined
      {
        await using subscription = bus.subscribe({ tenant: "acme", channel: "news" })
        await subscription.ready
        iterator = subscription[Symbol.asyncIterator]()
      }
      expect(await within(iterator.next(), 1_000, "next after dispose")).toEqual({
        done: true,
        value: undefined,
      })
    } finally {
      await bus.close()
    }
  })
})
