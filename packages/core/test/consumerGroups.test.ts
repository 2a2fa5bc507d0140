import { Effect, Fiber, Layer } from "effect"
import { describe, expect, it } from "vitest"
import {
  type ConsumeRequest,
  DeadLetterStore,
  GroupStore,
  memoryTransport,
  OutboxReader,
  type OutboxServices,
} from "../src/adapter.js"
import { createBus, type DeliveredEvent, memoryOutbox, Subscriber } from "../src/index.js"
import { collectInto, events, instrumentedStore, quiet, waitFor } from "./support.js"

/** Subscriber + memory transport over a fresh outbox. */
const setup = (options: { readonly changesDelayMs?: number } = {}) => {
  const outbox = memoryOutbox()
  const store = instrumentedStore(outbox, options)
  const layer = Subscriber.layer.pipe(Layer.provideMerge(memoryTransport()), Layer.provideMerge(store.layer))
  const provide = <A, E>(self: Effect.Effect<A, E, Subscriber | OutboxServices>) =>
    Effect.runPromise(quiet(Effect.provide(self, layer)))
  return { outbox, provide }
}

interface Call {
  readonly i: number
  readonly attempt: number
  readonly at: number
}

/** Starts a consumer whose handler records every call and fails when `fail` says so. */
const startConsumer = (
  request: ConsumeRequest,
  calls: Array<Call>,
  fail: (i: number, attempt: number) => boolean = () => false,
) =>
  Subscriber.use((s) =>
    s.consume(request, (event: DeliveredEvent, attempt) =>
      Effect.suspend(() => {
        const i = (event.data as { i: number }).i
        calls.push({ i, attempt, at: Date.now() })
        return fail(i, attempt) ? Effect.fail(new Error(`handler refused ${i}`)) : Effect.void
      }),
    ),
  ).pipe(Effect.forkChild)

const group = (name: string, extra: Partial<ConsumeRequest> = {}): ConsumeRequest => ({
  tenant: "acme",
  channel: "orders",
  group: name,
  ...extra,
})
const handled = (calls: ReadonlyArray<Call>) => calls.map((c) => c.i)

describe("consumer groups on the memory transport", () => {
  it("an ack moves the group's position: a restarted consumer gets no acknowledged event again", async () => {
    const { outbox, provide } = setup()
    outbox.commitBatch(events("acme", "orders", 5))
    await provide(
      Effect.gen(function* () {
        const first: Array<Call> = []
        const c1 = yield* startConsumer(group("billing"), first)
        yield* waitFor(() => first.length === 5)
        yield* Effect.sleep(20) // let the last ack land
        yield* Fiber.interrupt(c1)
        expect(handled(first)).toEqual([0, 1, 2, 3, 4])

        outbox.commitBatch(events("acme", "orders", 3, 5))
        const second: Array<Call> = []
        const c2 = yield* startConsumer(group("billing"), second)
        yield* waitFor(() => second.length === 3)
        yield* Effect.sleep(50)
        yield* Fiber.interrupt(c2)
        expect(handled(second)).toEqual([5, 6, 7])

        // Each group has its own position: a new group sees everything.
        const other: Array<Call> = []
        const c3 = yield* startConsumer(group("audit"), other)
        yield* waitFor(() => other.length === 8)
        yield* Fiber.interrupt(c3)
        expect(handled(other)).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
      }),
    )
  })

  it("an event whose handler was interrupted before finishing is delivered again after a restart", async () => {
    const { outbox, provide } = setup()
    outbox.commitBatch(events("acme", "orders", 3))
    await provide(
      Effect.gen(function* () {
        const calls: Array<number> = []
        const c1 = yield* Subscriber.use((s) =>
          s.consume(group("g"), (e) =>
            Effect.suspend(() => {
              const i = (e.data as { i: number }).i
              calls.push(i)
              return i === 1 ? Effect.never : Effect.void
            }),
          ),
        ).pipe(Effect.forkChild)
        yield* waitFor(() => calls.length === 2)
        yield* Fiber.interrupt(c1) // killed while handling event 1
        const again: Array<Call> = []
        const c2 = yield* startConsumer(group("g"), again)
        yield* waitFor(() => again.length === 2)
        yield* Fiber.interrupt(c2)
        expect(handled(again)).toEqual([1, 2])
        expect(again[0]!.attempt).toBe(1)
      }),
    )
  })

  it("a failing handler is retried with exponential backoff, then the channel moves on in order", async () => {
    const { outbox, provide } = setup()
    outbox.commitBatch(events("acme", "orders", 3))
    const calls: Array<Call> = []
    await provide(
      Effect.gen(function* () {
        const c = yield* startConsumer(
          group("g", { maxAttempts: 5, initialBackoffMs: 40, maxBackoffMs: 100 }),
          calls,
          (i, attempt) => i === 1 && attempt < 4,
        )
        yield* waitFor(() => calls.length === 6)
        yield* Fiber.interrupt(c)
      }),
    )
    expect(calls.map((c) => [c.i, c.attempt])).toEqual([
      [0, 1],
      [1, 1],
      [1, 2],
      [1, 3],
      [1, 4],
      [2, 1],
    ])
    const gaps = [2, 3, 4].map((k) => calls[k]!.at - calls[k - 1]!.at)
    // initial 40 ms, doubled per attempt, capped at 100 ms (timer slack of a few ms allowed)
    expect(gaps[0]).toBeGreaterThanOrEqual(38)
    expect(gaps[1]).toBeGreaterThanOrEqual(78)
    expect(gaps[2]).toBeGreaterThanOrEqual(98)
    expect(gaps[2]).toBeLessThan(200)
  })

  it("an event that keeps failing is dead-lettered after maxAttempts and never redelivered", async () => {
    const { outbox, provide } = setup()
    outbox.commitBatch(events("acme", "orders", 3))
    await provide(
      Effect.gen(function* () {
        const calls: Array<Call> = []
        const c1 = yield* startConsumer(
          group("g", { maxAttempts: 3, initialBackoffMs: 5 }),
          calls,
          (i) => i === 1,
        )
        yield* waitFor(() => calls.some((c) => c.i === 2))
        yield* Effect.sleep(20)
        yield* Fiber.interrupt(c1)
        expect(calls.map((c) => [c.i, c.attempt])).toEqual([
          [0, 1],
          [1, 1],
          [1, 2],
          [1, 3],
          [2, 1],
        ])
        const letters = yield* DeadLetterStore.use((s) => s.deadLetters(10))
        expect(letters).toHaveLength(1)
        expect(letters[0]).toMatchObject({ source: "g", attempts: 3 })
        expect(letters[0]!.event.data).toEqual({ i: 1 })
        expect(letters[0]!.reason).toContain("handler refused 1")

        // Restart: the dead-lettered event is behind the group's position.
        outbox.commitBatch(events("acme", "orders", 1, 3))
        const after: Array<Call> = []
        const c2 = yield* startConsumer(group("g"), after)
        yield* waitFor(() => after.length === 1)
        yield* Effect.sleep(30)
        yield* Fiber.interrupt(c2)
        expect(handled(after)).toEqual([3])
      }),
    )
  })

  it("one member of a group holds the position at a time; the next takes over where it stopped", async () => {
    const { outbox, provide } = setup()
    outbox.commitBatch(events("acme", "orders", 2))
    await provide(
      Effect.gen(function* () {
        const a: Array<Call> = []
        const b: Array<Call> = []
        const ca = yield* startConsumer(group("g"), a)
        yield* waitFor(() => a.length === 2)
        const cb = yield* startConsumer(group("g"), b)
        outbox.commitBatch(events("acme", "orders", 1, 2))
        yield* waitFor(() => a.length === 3)
        yield* Effect.sleep(30)
        expect(b).toEqual([]) // waiting for the claim
        yield* Fiber.interrupt(ca)
        outbox.commitBatch(events("acme", "orders", 1, 3))
        yield* waitFor(() => b.length === 1)
        yield* Effect.sleep(30)
        yield* Fiber.interrupt(cb)
        expect(handled(a)).toEqual([0, 1, 2])
        expect(handled(b)).toEqual([3])
      }),
    )
  })

  it("the Promise facade: a throwing handler is retried, then dead-lettered; deadLetters() lists it", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    const seen: Array<[string, number]> = []
    const consumer = bus.consume(
      { tenant: "acme", channel: "orders", group: "mailer", maxAttempts: 2, initialBackoffMs: 5 },
      async (event, attempt) => {
        seen.push([event.type, attempt])
        if (event.type === "bad") throw new Error("smtp down")
      },
    )
    await outbox.transaction((tx) =>
      bus.publish(tx, [
        { tenant: "acme", channel: "orders", type: "bad" },
        { tenant: "acme", channel: "orders", type: "good" },
      ]),
    )
    await Effect.runPromise(waitFor(() => seen.some(([t]) => t === "good")))
    await consumer.close()
    await consumer.done
    expect(seen).toEqual([
      ["bad", 1],
      ["bad", 2],
      ["good", 1],
    ])
    const letters = await bus.deadLetters()
    expect(letters.map((l) => [l.event.type, l.source, l.attempts])).toEqual([["bad", "mailer", 2]])
    expect(letters[0]!.reason).toContain("smtp down")
    await bus.close()
  })
})

describe("consumer groups and the shared feed", () => {
  // Fails on the current code, for the reason shown in subscribe.test.ts ("while the feed
  // lags"): the group subscribes from its position, the shared feed (whose change signal
  // is still in flight, as a NOTIFY would be) then hands it the events before that
  // position, so acknowledged events are handled again, after newer ones, and the
  // group's position moves backwards. See the report.
  it("a group resuming while the feed lags does not re-handle events behind its position", async () => {
    const { outbox, provide } = setup({ changesDelayMs: 50 })
    const address = { tenant: "acme", channel: "orders" }
    const calls: Array<number> = []
    await provide(
      Effect.gen(function* () {
        const reader = yield* OutboxReader
        const store = yield* GroupStore
        const subscriber = yield* Subscriber
        // Another subscriber of the channel in this process keeps the shared feed alive.
        const keepAlive = yield* collectInto(subscriber.subscribe(address))
        yield* Effect.sleep(20)
        outbox.commitBatch(events("acme", "orders", 3))
        // A previous run of group g acknowledged events 0 and 1.
        const page = yield* reader.read(address, "beginning", 10)
        yield* Effect.scoped(
          store
            .claimGroup(address, "g")
            .pipe(Effect.flatMap((claim) => claim.commit(page.events[1]!.cursor))),
        )
        const c = yield* Subscriber.use((s) =>
          s.consume(group("g"), (e) => Effect.sync(() => calls.push((e.data as { i: number }).i))),
        ).pipe(Effect.forkChild)
        yield* waitFor(() => keepAlive.items.length === 3)
        yield* Effect.sleep(50)
        yield* Fiber.interrupt(c)
        // The group's position must still be after event 2, not back at event 1.
        const position = yield* Effect.scoped(
          store.claimGroup(address, "g").pipe(Effect.map((claim) => claim.cursor)),
        )
        expect(position).toBe(page.events[2]!.cursor)
      }),
    )
    expect(calls).toEqual([2])
  })
})
