import { Effect, Fiber, Layer } from "effect"
import { describe, expect, it } from "vitest"
import {
  type ConsumeRequest,
  type GroupMembership,
  type Heartbeat,
  memoryTransport,
  type OutboxServices,
  outboxLayer,
} from "../src/adapter.js"
import { ownerOf } from "../src/bus/allTenants.js"
import {
  type BusError,
  type DeliveredEvent,
  type MemoryOutbox,
  memoryOutbox,
  Subscriber,
  TransportFailure,
} from "../src/index.js"
import { events, quiet, waitFor } from "./support.js"

/**
 * Consumer groups across tenants (`tenant: "*"`) on the memory transport: what only a
 * controlled membership can show (a member that dies without leaving, one that cannot renew,
 * a store without membership). The conformance suite runs the wildcard group itself on
 * every transport.
 */

/** Subscriber + memory transport over `outbox`, its membership replaced (`null`: none). */
const provideWith =
  (outbox: MemoryOutbox, members: GroupMembership | null | undefined = outbox.store.members) =>
  <A, E>(self: Effect.Effect<A, E, Subscriber | OutboxServices>) =>
    Effect.runPromise(
      quiet(
        Effect.provide(
          self,
          Subscriber.layer.pipe(
            Layer.provideMerge(memoryTransport()),
            Layer.provideMerge(outboxLayer({ ...outbox.store, members: members ?? undefined })),
          ),
        ),
      ),
    )

const wildcard = (extra: Partial<ConsumeRequest> = {}): ConsumeRequest => ({
  tenant: "*",
  channel: "orders",
  group: "billing",
  memberLeaseMs: 400,
  discoverIntervalMs: 100,
  ...extra,
})

const startMember = (request: ConsumeRequest, seen: Array<DeliveredEvent>) =>
  Subscriber.use((s) => s.consume(request, (e) => Effect.sync(() => seen.push(e)))).pipe(Effect.forkChild)

describe('consumer groups across tenants (tenant "*")', () => {
  it("rendezvous assignment: every tenant has one owner; a member leaving moves only its own tenants", () => {
    const tenants = Array.from({ length: 300 }, (_, i) => `t${i}`)
    const three = ["m1", "m2", "m3"]
    const before = new Map(tenants.map((t) => [t, ownerOf(t, three)]))
    const counts = three.map((m) => [...before.values()].filter((o) => o === m).length)
    // Roughly even: each of three members gets between a fifth and a half.
    for (const c of counts) expect(c).toBeGreaterThan(60)
    for (const c of counts) expect(c).toBeLessThan(150)
    const after = new Map(tenants.map((t) => [t, ownerOf(t, ["m1", "m3"])]))
    for (const t of tenants) if (before.get(t) !== "m2") expect(after.get(t)).toBe(before.get(t))
    expect(ownerOf("t1", [])).toBeUndefined()
  })

  it("a member that dies without leaving: its tenants run elsewhere once its lease ran out, in order, none lost", async () => {
    const outbox = memoryOutbox()
    const members = outbox.store.members!
    const key = { channel: "orders", group: "billing" }
    outbox.commitBatch([...events("acme", "orders", 3), ...events("globex", "orders", 3)])
    // A member that registered, took both addresses, and died (never renews, never leaves).
    await Effect.runPromise(members.heartbeat(key, "dead", 400))
    expect(await Effect.runPromise(members.lease(key, "dead", ["acme", "globex"]))).toEqual([
      "acme",
      "globex",
    ])
    const diedAt = Date.now()
    const seen: Array<DeliveredEvent> = []
    await provideWith(outbox)(
      Effect.gen(function* () {
        const member = yield* startMember(wildcard(), seen)
        yield* waitFor(() => seen.length === 6, 5_000, "both tenants taken over")
        const tookOver = Date.now() - diedAt
        // The lease (400 ms) and a tick or two (100 ms each) more, with slack for a loaded machine.
        expect(tookOver).toBeGreaterThanOrEqual(350)
        expect(tookOver).toBeLessThan(2_000)
        outbox.commitBatch(events("acme", "orders", 2, 3))
        yield* waitFor(() => seen.length === 8)
        yield* Fiber.interrupt(member)
      }),
    )
    const order = (tenant: string) =>
      seen.filter((e) => e.tenant === tenant).map((e) => (e.data as { i: number }).i)
    expect(order("acme")).toEqual([0, 1, 2, 3, 4])
    expect(order("globex")).toEqual([0, 1, 2])
  })

  it("a member that cannot renew its membership stops its addresses before its lease runs out, and resumes when it can", async () => {
    const outbox = memoryOutbox()
    const real = outbox.store.members!
    let down = false
    let failedBeats = 0
    const flaky: GroupMembership = {
      ...real,
      heartbeat: (key, member, leaseMs) =>
        Effect.suspend((): Effect.Effect<Heartbeat, BusError> => {
          if (!down) return real.heartbeat(key, member, leaseMs)
          failedBeats++
          return Effect.fail(
            new TransportFailure({
              transport: "memory",
              retryable: true,
              message: "membership store unreachable",
            }),
          )
        }),
    }
    outbox.commitBatch(events("acme", "orders", 2))
    const seen: Array<DeliveredEvent> = []
    await provideWith(
      outbox,
      flaky,
    )(
      Effect.gen(function* () {
        const member = yield* startMember(wildcard(), seen)
        yield* waitFor(() => seen.length === 2)
        down = true
        const downAt = Date.now()
        // Fenced within the lease: committed events wait rather than run unguarded.
        yield* Effect.sleep(600)
        expect(failedBeats).toBeGreaterThan(0)
        outbox.commitBatch(events("acme", "orders", 2, 2))
        yield* Effect.sleep(400)
        expect(
          seen.length,
          `handled while fenced (${Date.now() - downAt} ms after the store went down)`,
        ).toBe(2)
        down = false
        yield* waitFor(() => seen.length === 4, 5_000, "resumed after renewing")
        yield* Fiber.interrupt(member)
      }),
    )
    expect(seen.map((e) => (e.data as { i: number }).i)).toEqual([0, 1, 2, 3])
  })

  it("a store without membership: ConfigError that names what is missing; bad names are InvalidName", async () => {
    const outbox = memoryOutbox()
    const run = provideWith(outbox, null)
    const error = await run(Subscriber.use((s) => s.consume(wildcard(), () => Effect.void)).pipe(Effect.flip))
    expect(error).toMatchObject({ _tag: "ConfigError" })
    expect(error.message).toContain('tenant "*"')
    const badChannel = await provideWith(outbox)(
      Subscriber.use((s) => s.consume(wildcard({ channel: "a.b" }), () => Effect.void)).pipe(Effect.flip),
    )
    expect(badChannel).toMatchObject({ _tag: "InvalidName", field: "channel" })
  })
})
