import { Effect, Fiber, Layer, Stream } from "effect"
import { describe, expect, it } from "vitest"
import {
  DeadLetterStore,
  type Envelope,
  OutboxRelay,
  type RelayServices,
  relayBatch,
  runRelay,
  Transport,
} from "../src/adapter.js"
import {
  type BusError,
  type DeliveredEvent,
  memoryOutbox,
  TransportFailure,
  TransportUnavailable,
} from "../src/index.js"
import {
  collectInto,
  events,
  indices,
  instrumentedBroker,
  instrumentedStore,
  quiet,
  waitFor,
  waitForEffect,
} from "./support.js"

/** An outbox, a memory broker in front of its own store, and counters around both. */
const setup = (
  options: {
    readonly before?: Parameters<typeof instrumentedBroker>[1]
    readonly failRelay?: () => BusError | undefined
  } = {},
) => {
  const outbox = memoryOutbox()
  const brokerOutbox = memoryOutbox()
  const broker = instrumentedBroker(brokerOutbox, options.before)
  const store = instrumentedStore(
    outbox,
    options.failRelay === undefined ? {} : { failRelay: options.failRelay },
  )
  const layer = Layer.merge(broker.layer, store.layer)
  const provide = <A, E>(self: Effect.Effect<A, E, RelayServices>) =>
    Effect.runPromise(quiet(Effect.provide(self, layer)))
  return { outbox, brokerOutbox, sends: broker.log, store: store.log, provide }
}

const ids = (list: ReadonlyArray<Envelope>) => list.map((e) => e.id)
const backlog = OutboxRelay.use((s) => s.backlog)
const backlogIsZero = backlog.pipe(Effect.map((n) => n === 0))

/** Events of (tenant, channel) as the broker's subscribers see them, from the beginning. */
const brokerSubscriber = (tenant: string, channel: string) =>
  Effect.gen(function* () {
    const t = yield* Transport
    return yield* collectInto(t.subscribe({ tenant, channel, from: "beginning" }))
  })

/** Adjacent pairs of the broker's order that go backwards, e.g. "5 before 3" (first few). */
const inversions = (order: ReadonlyArray<number>): Array<string> =>
  order.flatMap((v, k) => (k > 0 && v < order[k - 1]! ? [`${order[k - 1]} before ${v}`] : [])).slice(0, 5)

describe("relay: two relays over one outbox", () => {
  it("forward 2,000 events: broker subscribers see each exactly once and the backlog reaches 0", async () => {
    const { outbox, brokerOutbox, sends, store, provide } = setup({
      // A yield per send, so the two relays really interleave.
      before: () => Effect.yieldNow,
    })
    const channels = Array.from({ length: 40 }, (_, k) => `ch-${k}`)
    const published: Array<Envelope> = []
    // Transactions of 1 to 5 events, spread over forty channels (more than one batch covers,
    // so each relay always finds work).
    const commitUpTo = (total: number) => {
      for (let n = published.length; published.length < total; n++) {
        const size = Math.min(1 + (n % 5), total - published.length)
        const batch = Array.from(
          { length: size },
          (_, k) => events("t", channels[(n + k) % channels.length]!, 1, published.length + k)[0]!,
        )
        outbox.commitBatch(batch)
        published.push(...batch)
      }
    }
    commitUpTo(1_000)
    await provide(
      Effect.gen(function* () {
        const subscribers = yield* Effect.forEach(channels, (c) => brokerSubscriber("t", c))
        const r1 = yield* runRelay({ owner: "relay-1", batchSize: 20, leaseMs: 1_000 }).pipe(Effect.forkChild)
        const r2 = yield* runRelay({ owner: "relay-2", batchSize: 20, leaseMs: 1_000 }).pipe(Effect.forkChild)
        // The relay that heartbeats first claims every partition and hands the other its share
        // at a later tick; on a fast machine the first half may be gone by then. The second
        // half is committed once both hold partitions, so both relay while the other does.
        yield* waitFor(
          () =>
            (store.claimsBy.get("relay-1")?.size ?? 0) > 0 && (store.claimsBy.get("relay-2")?.size ?? 0) > 0,
          10_000,
          "both relays holding partitions",
        )
        commitUpTo(2_000)
        yield* waitForEffect(backlogIsZero, 20_000, "backlog 0")
        const seen = () => subscribers.flatMap((s) => s.items)
        yield* waitFor(() => seen().length >= 2_000, 10_000, "2,000 events at the broker's subscribers")
        yield* Effect.sleep(50) // anything extra would show up now
        yield* Fiber.interrupt(r1)
        yield* Fiber.interrupt(r2)

        const delivered = seen()
        expect(delivered).toHaveLength(2_000)
        expect(new Set(delivered.map((e) => e.id)).size).toBe(2_000)
        expect(new Set(delivered.map((e) => e.id))).toEqual(new Set(ids(published)))
        expect(brokerOutbox.committed()).toHaveLength(2_000)
        expect(yield* backlog).toBe(0)
        // Partition leases kept the relays apart: no event was even sent twice.
        expect(sends.total).toBe(2_000)
        // Both relays took part: the second took its share from the first, which handed the
        // partitions over between rounds (positions stored), so nothing was resent.
        expect(store.claimsBy.get("relay-1")?.size ?? 0).toBeGreaterThan(0)
        expect(store.claimsBy.get("relay-2")?.size ?? 0).toBeGreaterThan(0)
      }),
    )
  })

  it("one relay keeps each channel's order on the broker", async () => {
    const { outbox, brokerOutbox, provide } = setup({
      before: () => Effect.sleep(Math.floor(Math.random() * 3)),
    })
    for (let i = 0; i < 60; i++) outbox.commitBatch(events("t", "a", 3, 3 * i))
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "solo", batchSize: 5 }).pipe(Effect.forkChild)
        yield* waitForEffect(backlogIsZero, 10_000)
        yield* Fiber.interrupt(r)
      }),
    )
    expect(indices(brokerOutbox.committed())).toEqual(Array.from({ length: 180 }, (_, i) => i))
  })

  it("two relays keep each channel's order on the broker (events of one transaction stay in order)", async () => {
    const { outbox, brokerOutbox, provide } = setup({
      before: () => Effect.sleep(Math.floor(Math.random() * 3)),
    })
    for (let i = 0; i < 60; i++) outbox.commitBatch(events("t", "a", 3, 3 * i))
    await provide(
      Effect.gen(function* () {
        const r1 = yield* runRelay({ owner: "relay-1", batchSize: 5 }).pipe(Effect.forkChild)
        const r2 = yield* runRelay({ owner: "relay-2", batchSize: 5 }).pipe(Effect.forkChild)
        yield* waitForEffect(backlogIsZero, 10_000)
        yield* Fiber.interrupt(r1)
        yield* Fiber.interrupt(r2)
      }),
    )
    expect(inversions(indices(brokerOutbox.committed()))).toEqual([])
    expect(indices(brokerOutbox.committed())).toEqual(Array.from({ length: 180 }, (_, i) => i))
  })
})

describe("relay: a poison row", () => {
  const poisonSetup = (error: () => TransportFailure | TransportUnavailable) => {
    let poison = ""
    const s = setup({ before: (e) => (e.id === poison ? error() : undefined) })
    const a = events("t", "a", 5)
    poison = a[1]!.id
    s.outbox.commitBatch(a)
    s.outbox.commitBatch(events("t", "b", 3, 100))
    return { ...s, a, poison }
  }
  const retryable = () => new TransportFailure({ transport: "broker", retryable: true, message: "rejected" })

  it("is retried without blocking other channels, later events included; its own channel waits behind it", async () => {
    const { outbox, brokerOutbox, sends, a, poison, provide } = poisonSetup(retryable)
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "r", maxAttempts: 1_000_000, maxIdleMs: 50 }).pipe(
          Effect.forkChild,
        )
        yield* waitFor(() => brokerOutbox.committed().length === 4, 5_000, "first events forwarded")
        // Later events, on another channel and on a new one, keep flowing while the poison row retries.
        outbox.commitBatch(events("t", "b", 2, 103))
        outbox.commitBatch(events("t", "c", 2, 200))
        yield* waitFor(() => brokerOutbox.committed().length === 8, 5_000, "later events forwarded")
        yield* waitFor(() => (sends.attempts.get(poison) ?? 0) >= 3, 5_000, "poison retried")
        yield* Fiber.interrupt(r)
      }),
    )
    const forwarded = brokerOutbox.committed()
    expect(forwarded.filter((e) => e.channel === "b").map((e) => (e.data as { i: number }).i)).toEqual([
      100, 101, 102, 103, 104,
    ])
    expect(forwarded.filter((e) => e.channel === "c")).toHaveLength(2)
    // Channel a: the row before the poison went out; the rows after it wait, so nothing overtakes it.
    expect(forwarded.filter((e) => e.channel === "a").map((e) => e.id)).toEqual([a[0]!.id])
    expect(sends.attempts.get(a[2]!.id)).toBeUndefined()
  })

  it("is parked in dead letters after maxAttempts, then the rest of its channel flows in order", async () => {
    const { brokerOutbox, sends, a, poison, provide } = poisonSetup(retryable)
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "r", maxAttempts: 3 }).pipe(Effect.forkChild)
        yield* waitForEffect(backlogIsZero, 5_000)
        yield* Fiber.interrupt(r)
        const letters = yield* DeadLetterStore.use((s) => s.deadLetters(10))
        expect(letters).toHaveLength(1)
        expect(letters[0]).toMatchObject({ source: "relay", attempts: 3 })
        expect(letters[0]!.event.id).toBe(poison)
        expect(letters[0]!.reason).toContain("TransportFailure")
      }),
    )
    expect(sends.attempts.get(poison)).toBe(3)
    expect(
      brokerOutbox
        .committed()
        .filter((e) => e.channel === "a")
        .map((e) => e.id),
    ).toEqual([a[0]!, a[2]!, a[3]!, a[4]!].map((e) => e.id))
    expect(brokerOutbox.committed()).toHaveLength(7)
  })

  it("a non-retryable send error parks the row at once and the rest of the batch goes through", async () => {
    const { brokerOutbox, sends, poison, provide } = poisonSetup(
      () =>
        new TransportFailure({ transport: "broker", retryable: false, message: "message rejected for good" }),
    )
    const result = await provide(relayBatch({ owner: "r", maxAttempts: 10 }))
    expect(result).toEqual({ read: 8, forwarded: 7, failed: 0, parked: 1 })
    expect(sends.attempts.get(poison)).toBe(1)
    expect(brokerOutbox.committed()).toHaveLength(7)
    const letters = await provide(DeadLetterStore.use((s) => s.deadLetters(10)))
    expect(letters.map((l) => [l.event.id, l.attempts])).toEqual([[poison, 1]])
    expect(await provide(backlog)).toBe(0)
  })

  it("a broker outage of one second dead-letters nothing; everything goes out once the broker is back", async () => {
    let down = true
    const { outbox, brokerOutbox, provide } = setup({
      before: () =>
        down ? new TransportUnavailable({ transport: "broker", message: "connection refused" }) : undefined,
    })
    outbox.commitBatch(events("t", "a", 5))
    outbox.commitBatch(events("t", "b", 5, 100))
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "r" }).pipe(Effect.forkChild)
        yield* Effect.sleep(1_000)
        down = false
        yield* waitForEffect(backlogIsZero, 10_000)
        yield* Fiber.interrupt(r)
        const letters = yield* DeadLetterStore.use((s) => s.deadLetters(100))
        expect(
          letters.map((l) => `${l.event.channel}/${(l.event.data as { i: number }).i}: ${l.reason}`),
        ).toEqual([])
      }),
    )
    expect(brokerOutbox.committed()).toHaveLength(10)
  })
})

describe("relay: an outage in the middle of a batch", () => {
  it("rows that reached the broker before the outage are not sent again after it", async () => {
    let down = false
    const { outbox, brokerOutbox, sends, provide } = setup({
      before: (e) => {
        if ((e.data as { i: number }).i === 5 && sends.total < 7) down = true
        return down
          ? new TransportUnavailable({ transport: "broker", message: "connection refused" })
          : undefined
      },
    })
    const published = events("t", "a", 10)
    outbox.commitBatch(published)
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "r", maxIdleMs: 50 }).pipe(Effect.forkChild)
        yield* waitFor(() => brokerOutbox.committed().length === 5, 5_000, "five before the outage")
        yield* Effect.sleep(500)
        down = false
        yield* waitForEffect(backlogIsZero, 10_000)
        yield* Fiber.interrupt(r)
      }),
    )
    expect(brokerOutbox.committed().map((e) => e.id)).toEqual(ids(published))
    // The first five went once; the sixth was tried during the outage and again after it.
    expect(published.slice(0, 5).map((e) => sends.attempts.get(e.id))).toEqual([1, 1, 1, 1, 1])
  })
})

describe("relay: stopped or killed mid-batch", () => {
  it("a relay stopped mid-batch gives its partitions back at once; the next relay resends only the unstored part", async () => {
    let stall = true
    const { outbox, brokerOutbox, sends, provide } = setup({
      // The first relay stalls on the fifth event.
      before: (e) => (stall && (e.data as { i: number }).i === 4 ? Effect.never : undefined),
    })
    const published = events("t", "a", 10)
    outbox.commitBatch(published)
    await provide(
      Effect.gen(function* () {
        const first = yield* runRelay({ owner: "stopping", leaseMs: 60_000 }).pipe(Effect.forkChild)
        yield* waitFor(() => sends.total === 5, 2_000, "four sends and a stall")
        yield* Fiber.interrupt(first)
        stall = false
        expect(brokerOutbox.committed()).toHaveLength(4)
        // Released, not left to a 60 s lease: another relay takes the partition at once.
        const result = yield* relayBatch({ owner: "heir", leaseMs: 60_000 })
        expect(result.forwarded).toBe(10)
        expect(yield* backlog).toBe(0)
      }),
    )
    // The position moves once per batch, so the four were sent again and dropped by id.
    expect(brokerOutbox.committed().map((e) => e.id)).toEqual(ids(published))
  })

  it("after a killed relay's lease expires another relay takes its partitions over; the broker holds no duplicates", async () => {
    let stall = true
    const { outbox, brokerOutbox, sends, store, provide } = setup({
      before: (e) => (stall && (e.data as { i: number }).i === 4 ? Effect.never : undefined),
    })
    const published = events("t", "a", 10)
    outbox.commitBatch(published)
    await provide(
      Effect.gen(function* () {
        const killed = yield* runRelay({ owner: "killed", leaseMs: 300 }).pipe(Effect.forkChild)
        yield* waitFor(() => sends.total === 5, 2_000, "four sends and a stall")
        // A killed process stores nothing more and releases nothing.
        store.dead.add("killed")
        yield* Fiber.interrupt(killed)
        stall = false
        const start = Date.now()
        const heir = yield* runRelay({ owner: "heir", leaseMs: 300 }).pipe(Effect.forkChild)
        yield* waitForEffect(backlogIsZero, 5_000, "backlog 0")
        // Taken over after the lease ran out, not before.
        expect(Date.now() - start).toBeGreaterThanOrEqual(150)
        yield* Fiber.interrupt(heir)
        const t = yield* Transport
        const seen = yield* t
          .subscribe({ tenant: "t", channel: "a", from: "beginning" })
          .pipe(Stream.take(10), Stream.runCollect)
        expect(seen.map((e: DeliveredEvent) => e.id)).toEqual(ids(published))
      }),
    )
    expect([...sends.attempts.values()].filter((n) => n === 2)).toHaveLength(5)
    expect(brokerOutbox.committed().map((e) => e.id)).toEqual(ids(published))
  })
})

describe("relay: idle", () => {
  it("an idle relay does not spin: few reads per partition over one second", async () => {
    const { store, provide } = setup()
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "idle" }).pipe(Effect.forkChild)
        yield* Effect.sleep(1_000)
        yield* Fiber.interrupt(r)
      }),
    )
    // Four partitions, each polled with a pause that doubles from 10 ms to 1 s.
    expect(store.relayReads).toBeGreaterThan(0)
    expect(store.relayReads).toBeLessThanOrEqual(4 * 9)
  })

  it("a commit cuts the idle pause short", async () => {
    const { outbox, brokerOutbox, provide } = setup()
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "idle", maxIdleMs: 5_000 }).pipe(Effect.forkChild)
        yield* Effect.sleep(1_500) // long enough for the pause to have grown past 1 s
        const start = Date.now()
        outbox.commitBatch(events("t", "a", 1))
        yield* waitFor(() => brokerOutbox.committed().length === 1, 2_000)
        expect(Date.now() - start).toBeLessThan(200)
        yield* Fiber.interrupt(r)
      }),
    )
  })

  it("a store that is down is retried with a growing pause, not in a loop", async () => {
    const { store, provide } = setup({
      failRelay: () => new TransportUnavailable({ transport: "postgres", message: "connection refused" }),
    })
    await provide(
      Effect.gen(function* () {
        const r = yield* runRelay({ owner: "r" }).pipe(Effect.forkChild)
        yield* Effect.sleep(1_000)
        yield* Fiber.interrupt(r)
      }),
    )
    expect(store.relayReads).toBeGreaterThan(1)
    expect(store.relayReads).toBeLessThanOrEqual(4 * 6)
  })
})
