import { Effect, Exit, Fiber, Scope } from "effect"
import { describe, expect, it } from "vitest"
import {
  anchoredFilter,
  coalesce,
  FeedLog,
  type GateItem,
  type LogPlace,
  MemoryOutbox,
  makeEnvelope,
  PositionGate,
  pollLog,
  prepareSends,
  retryWhileRetryable,
} from "../src/adapter.js"
import { BusClosed, type DeliveredEvent, TransportUnavailable } from "../src/index.js"

/**
 * The broker helpers of `@bus/core/adapter` (src/broker/): what NATS and Redis Streams share.
 * Each is checked here on its own; the brokers' transport tests run them against real servers.
 */

const address = { tenant: "acme", channel: "orders" }

const delivered = (i: number, time = Date.now()): DeliveredEvent => ({
  ...Effect.runSync(makeEnvelope({ ...address, type: "t", data: { i } }, { now: new Date(time) })),
  cursor: `c${i}`,
})

const item = (pos: number, event: DeliveredEvent | undefined, position?: string): GateItem<number> => ({
  pos,
  event,
  position,
  at: event === undefined ? 0 : Date.parse(event.time),
})

describe("coalesce", () => {
  it("one request per key for the callers of one turn, a new one for a later turn; closing fails the waiting", async () => {
    const runs: Array<string> = []
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const scope = yield* Effect.scope
          const head = coalesce(scope, (key) => Effect.sync(() => runs.push(key)), "closing")
          const burst = yield* Effect.all(
            Array.from({ length: 100 }, (_, i) => head(i % 2 === 0 ? "a" : "b")),
            { concurrency: "unbounded" },
          )
          expect(runs.sort()).toEqual(["a", "b"])
          // Every caller got the answer of its key's one request.
          expect(new Set(burst.filter((_, i) => i % 2 === 0)).size).toBe(1)
          yield* head("a")
          expect(runs).toHaveLength(3)
        }),
      ),
    )

    // In flight: the first call reads at once (before it returns to the event loop); the
    // calls made while it runs share it; a call after it answered reads again.
    const inFlight: Array<number> = []
    let answer: (() => void) | undefined
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const scope = yield* Effect.scope
          const head = coalesce(
            scope,
            () =>
              Effect.sync(() => inFlight.push(Date.now())).pipe(
                Effect.andThen(
                  Effect.callback<void>((resume) => {
                    answer = () => resume(Effect.void)
                  }),
                ),
              ),
            "closing",
            "inFlight",
          )
          const first = yield* Effect.forkChild(head("a"), { startImmediately: true })
          expect(inFlight).toHaveLength(1)
          const joined = yield* Effect.forkChild(head("a"), { startImmediately: true })
          expect(inFlight).toHaveLength(1)
          answer!()
          yield* Fiber.join(first)
          yield* Fiber.join(joined)
          yield* Effect.forkChild(head("a"), { startImmediately: true })
          expect(inFlight).toHaveLength(2)
          answer!()
        }),
      ),
    )

    const scope = Scope.makeUnsafe()
    const never = coalesce(scope, () => Effect.never, "the transport is closing")
    const waiting = Effect.runFork(never("x"))
    await new Promise((resolve) => setTimeout(resolve, 10))
    await Effect.runPromise(Scope.close(scope, Exit.void))
    const exit = await Effect.runPromise(Fiber.await(waiting))
    expect(
      Exit.isFailure(exit) &&
        exit.cause.reasons.some((r) => r._tag === "Fail" && r.error instanceof BusClosed),
    ).toBe(true)
  })
})

describe("retryWhileRetryable", () => {
  it("retries a retryable failure until it succeeds, never a permanent one, and stops when giveUp says so", async () => {
    let calls = 0
    const flaky = Effect.suspend(() =>
      ++calls < 4
        ? Effect.fail(new TransportUnavailable({ transport: "x", message: "down" }))
        : Effect.succeed(calls),
    )
    expect(await Effect.runPromise(retryWhileRetryable(flaky, "x: flaky", { initial: "1 millis" }))).toBe(4)

    let permanentCalls = 0
    const permanent = Effect.suspend(() => {
      permanentCalls++
      return Effect.fail(new BusClosed({ message: "closed" }))
    })
    const refused = await Effect.runPromise(Effect.exit(retryWhileRetryable(permanent, "x: permanent")))
    expect(Exit.isFailure(refused)).toBe(true)
    expect(permanentCalls).toBe(1)

    let budgetCalls = 0
    const always = Effect.suspend(() => {
      budgetCalls++
      return Effect.fail(new TransportUnavailable({ transport: "x", message: "down" }))
    })
    const spent = await Effect.runPromise(
      Effect.exit(
        retryWhileRetryable(always, "x: budget", { initial: "1 millis", giveUp: () => budgetCalls >= 3 }),
      ),
    )
    expect(Exit.isFailure(spent)).toBe(true)
    expect(budgetCalls).toBe(3)
  })
})

describe("prepareSends", () => {
  it("prepares from `from` on, builds the per-address key once per run of one address, and stops at the first bad item", () => {
    const events = [1, 2, 3].map((i) => ({ event: delivered(i) }))
    const keys: Array<string> = []
    const ok = prepareSends(
      events,
      1,
      (a) => {
        keys.push(`${a.tenant}.${a.channel}`)
        return `${a.tenant}.${a.channel}`
      },
      ({ event }, key) => `${key}:${(event.data as { i: number }).i}`,
    )
    expect(ok).toEqual({ prepared: ["acme.orders:2", "acme.orders:3"], invalid: undefined })
    expect(keys).toEqual(["acme.orders"])

    const bad = [...events, { event: { ...delivered(4), tenant: "no spaces" } }, { event: delivered(5) }]
    const stopped = prepareSends(
      bad,
      0,
      () => "k",
      () => 1,
    )
    expect(stopped.prepared).toHaveLength(3)
    expect(stopped.invalid?._tag).toBe("InvalidName")
  })
})

describe("PositionGate and pollLog", () => {
  it("hands over the shared page itself when all of it is after the position; drops what is at or below it; filters by outbox position", () => {
    const log = new FeedLog(100)
    const metas = new WeakMap<
      ReadonlyArray<DeliveredEvent>,
      { from: number; to: number; items: Array<GateItem<number>>; minAt: number }
    >()
    const append = (from: number, items: Array<GateItem<number>>) => {
      const events = items.map((i) => i.event!)
      metas.set(events, { from, to: items.at(-1)!.pos, items, minAt: Math.min(...items.map((i) => i.at)) })
      log.append(events)
      return events
    }
    const page1 = append(0, [item(1, delivered(1)), item(2, delivered(2))])
    const page2 = append(2, [item(3, delivered(3), "p3"), item(4, delivered(4), "p4")])

    const fresh = new PositionGate<number, GateItem<number>>((a, b) => a - b, 0, undefined, undefined)
    const place: LogPlace = { index: 0, ended: undefined }
    const poll = (gate: PositionGate<number, GateItem<number>>, at: LogPlace) =>
      pollLog(log, at, (events) => gate.page(metas.get(events)!, events))
    const first = poll(fresh, place)
    expect(first !== "wait" && first !== "step" && first.events).toBe(page1)
    const second = poll(fresh, place)
    expect(second !== "wait" && second !== "step" && second.events).toBe(page2)
    expect(poll(fresh, place)).toBe("wait")
    expect(fresh.lastItem?.pos).toBe(4)

    // Joined mid-page: only what is after its position, and a copy rather than the shared array.
    const behind = new PositionGate<number, GateItem<number>>((a, b) => a - b, 3, undefined, undefined)
    const mid = poll(behind, { index: 1, ended: undefined })
    expect(mid !== "wait" && mid !== "step" && mid.events.map((e) => (e.data as { i: number }).i)).toEqual([
      4,
    ])

    // After a flip: an outbox cursor's filter drops what it covers.
    const flipped = new PositionGate<number, GateItem<number>>(
      (a, b) => a - b,
      0,
      (p) => p !== "p3",
      undefined,
    )
    const kept = [
      poll(flipped, { index: 0, ended: undefined }),
      poll(flipped, { index: 1, ended: undefined }),
    ]
    expect(
      kept.flatMap((k) =>
        k === "wait" || k === "step" ? [] : k.events.map((e) => (e.data as { i: number }).i),
      ),
    ).toEqual([1, 2, 4])
  })

  it("an anchored filter delivers events published after the anchor at once and asks the outbox about older ones (held)", async () => {
    const outbox = new MemoryOutbox()
    const anchorAt = Date.now()
    const old = delivered(1, anchorAt - 60_000)
    const young = delivered(2, anchorAt + 1)
    // `old` was published before the anchor and committed after its head: the outbox has it after the head.
    const head = await Effect.runPromise(outbox.store.head(address))
    outbox.commitBatch([old])
    const filter = anchoredFilter(outbox.store, address, { at: anchorAt, outboxHead: head }, 100, "test")
    const gate = new PositionGate<number, GateItem<number>>((a, b) => a - b, 0, undefined, filter)
    const items = [item(1, old), item(2, young), item(3, delivered(3, anchorAt - 60_000))]
    expect(gate.admit(items)).toEqual([])
    expect(gate.held).toHaveLength(3)
    const out = await Effect.runPromise(gate.admitHeld)
    // The one committed after the head, the young one; not the old one the outbox does not have after it.
    expect(out.map((e) => e.id)).toEqual([old.id, young.id])
    expect(gate.last).toBe(3)
  })
})
