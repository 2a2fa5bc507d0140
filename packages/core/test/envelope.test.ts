import { randomUUID } from "node:crypto"
import { Effect, Layer } from "effect"
import { describe, expect, it } from "vitest"
import {
  claimFreshId,
  decodeEnvelope,
  defaultMaxPayloadBytes,
  type Envelope,
  encodedSize,
  isUuidv7,
  makeEnvelope,
  memoryTransport,
  outboxTransport,
  uuidv7,
} from "../src/adapter.js"
import {
  type EventInput,
  InvalidEvent,
  type MemoryOutbox,
  memoryOutbox,
  PayloadTooLarge,
  Publisher,
} from "../src/index.js"
import { run, runFail } from "./support.js"

const base = { tenant: "acme", channel: "orders", type: "order.paid" } as const

/** Calls makeEnvelope with data that is deliberately not JSON. */
const withData = (data: unknown) => makeEnvelope({ ...base, data } as unknown as EventInput)

describe("makeEnvelope: a valid event", () => {
  it("builds the envelope with a UUIDv7 id, null data by default, copied headers and the given time", async () => {
    const now = new Date("2025-01-02T03:04:05.678Z")
    const env = await run(makeEnvelope({ ...base, headers: { traceparent: "00-abc-def-01" } }, { now }))
    expect(isUuidv7(env.id)).toBe(true)
    expect(env).toEqual({
      id: env.id,
      tenant: "acme",
      channel: "orders",
      type: "order.paid",
      data: null,
      headers: { traceparent: "00-abc-def-01" },
      time: "2025-01-02T03:04:05.678Z",
    })
  })

  it("accepts every JSON shape, shared (non-circular) references and null-prototype objects", async () => {
    const shared = { x: 1 }
    const bare = Object.create(null) as Record<string, unknown>
    bare.k = "v"
    const data = { a: [1, "two", true, null, { b: -0.5 }], s: shared, t: shared, bare, e: "", z: 0, u: "ü😀" }
    const env = await run(withData(data))
    expect(env.data).toBe(data)
  })

  it("keeps a caller-chosen UUIDv7 id", async () => {
    const id = uuidv7()
    expect((await run(makeEnvelope({ ...base, id }))).id).toBe(id)
  })
})

describe("makeEnvelope: non-JSON data is refused with InvalidEvent(reason data)", () => {
  class Money {
    constructor(readonly cents: number) {}
  }
  const circular: Record<string, unknown> = { a: 1 }
  circular.self = circular
  const holey: Array<number> = []
  holey[0] = 1
  holey[2] = 3
  const circularArray: Array<unknown> = [1]
  circularArray.push(circularArray)

  const cases: ReadonlyArray<readonly [string, unknown, string]> = [
    ["a function", () => 1, "data is a function"],
    ["a nested function", { a: { f: () => 1 } }, "data.a.f is a function"],
    ["a BigInt", 10n, "data is a bigint"],
    ["a nested BigInt", { n: [1, 2n] }, "data.n[1] is a bigint"],
    ["NaN", Number.NaN, "data is NaN"],
    ["Infinity", Number.POSITIVE_INFINITY, "data is Infinity"],
    ["-Infinity inside an array", [Number.NEGATIVE_INFINITY], "data[0] is -Infinity"],
    ["undefined inside an object", { a: undefined }, "data.a is a undefined"],
    ["a hole in an array", holey, "data[1] is a undefined"],
    ["a symbol", Symbol("s"), "data is a symbol"],
    ["a circular object", circular, "data.self is a circular reference"],
    ["a circular array", circularArray, "data[1] is a circular reference"],
    ["a Date", new Date(0), "data is a Date object"],
    ["a class instance", { price: new Money(100) }, "data.price is a Money object"],
    ["a Map", new Map([["a", 1]]), "data is a Map object"],
    ["a Set", new Set([1]), "data is a Set object"],
    ["a typed array", new Uint8Array(2), "data is a Uint8Array object"],
    ["a boxed string", new String("s"), "data is a String object"],
  ]

  it.each(cases)("%s", async (_label, data, where) => {
    const e = await runFail(withData(data))
    expect(e).toBeInstanceOf(InvalidEvent)
    expect(e).toMatchObject({ _tag: "InvalidEvent", reason: "data", retryable: false })
    expect(e.message).toContain(where)
  })
})

describe("makeEnvelope: other fields", () => {
  it("headers must be an object of strings", async () => {
    for (const headers of [{ a: 1 }, { a: null }, { a: undefined }, { a: ["x"] }, null, ["x"], "x", 5]) {
      const e = await runFail(makeEnvelope({ ...base, headers } as unknown as EventInput))
      expect(e, JSON.stringify(headers)).toMatchObject({ _tag: "InvalidEvent", reason: "headers" })
    }
  })

  it("type must be a non-empty string of at most 256 characters", async () => {
    expect((await run(makeEnvelope({ ...base, type: "t".repeat(256) }))).type).toHaveLength(256)
    for (const type of ["", "t".repeat(257), undefined, 5]) {
      const e = await runFail(makeEnvelope({ ...base, type } as unknown as EventInput))
      expect(e).toMatchObject({ _tag: "InvalidEvent", reason: "type" })
    }
  })

  it("id must be a lower-case UUIDv7", async () => {
    const v7 = uuidv7()
    for (const id of ["not-a-uuid", randomUUID(), v7.toUpperCase(), v7.replace(/-/g, ""), "", 42]) {
      const e = await runFail(makeEnvelope({ ...base, id } as unknown as EventInput))
      expect(e, String(id)).toMatchObject({ _tag: "InvalidEvent", reason: "id" })
    }
  })

  it("a generated id is fresh exactly once; caller-chosen, copied and decoded ids never are", async () => {
    const generated = await run(makeEnvelope(base))
    const copy = { ...generated }
    expect(claimFreshId(copy)).toBe(false)
    expect(claimFreshId(generated)).toBe(true)
    expect(claimFreshId(generated)).toBe(false)
    expect(Object.isFrozen(generated)).toBe(true)
    expect(claimFreshId(await run(makeEnvelope({ ...base, id: uuidv7() })))).toBe(false)
    const decoded = await run(decodeEnvelope(JSON.parse(JSON.stringify(await run(makeEnvelope(base))))))
    expect(claimFreshId(decoded)).toBe(false)
  })

  it("the event must be an object", async () => {
    for (const input of [null, "event", 1]) {
      const e = await runFail(makeEnvelope(input as unknown as EventInput))
      expect(e).toMatchObject({ _tag: "InvalidEvent", reason: "not-an-object" })
    }
  })
})

describe("makeEnvelope: payload limit", () => {
  const id = uuidv7()
  const now = new Date("2025-01-01T00:00:00.000Z")
  const sized = (data: string, maxPayloadBytes: number) =>
    makeEnvelope({ ...base, id, data, headers: { h: "v" } }, { now, maxPayloadBytes })

  it("accepts an event of exactly the limit and refuses limit + 1 with PayloadTooLarge", async () => {
    const overhead = encodedSize(await run(sized("", 1_000_000)))
    const limit = 4_096
    const atLimit = await run(sized("x".repeat(limit - overhead), limit))
    expect(encodedSize(atLimit)).toBe(limit)
    const e = await runFail(sized("x".repeat(limit - overhead + 1), limit))
    expect(e).toBeInstanceOf(PayloadTooLarge)
    expect(e).toMatchObject({ _tag: "PayloadTooLarge", bytes: limit + 1, limit, retryable: false })
  })

  it("counts UTF-8 bytes, not characters", async () => {
    const overhead = encodedSize(await run(sized("", 1_000_000)))
    const limit = overhead + 10
    await run(sized("é".repeat(5), limit)) // 10 bytes
    const e = await runFail(sized("é".repeat(6), limit)) // 12 bytes
    expect(e).toMatchObject({ _tag: "PayloadTooLarge", bytes: limit + 2 })
  })

  it("encodedSize is the byte length of the compact JSON form; the default limit is 1 MiB", async () => {
    const env = await run(sized("ü", 1_000_000))
    expect(encodedSize(env)).toBe(Buffer.byteLength(JSON.stringify(env), "utf8"))
    expect(defaultMaxPayloadBytes).toBe(1024 * 1024)
    const e = await runFail(makeEnvelope({ ...base, data: "x".repeat(defaultMaxPayloadBytes) }))
    expect(e).toMatchObject({ _tag: "PayloadTooLarge", limit: defaultMaxPayloadBytes })
  })
})

describe("Publisher: validation before append", () => {
  const publisher = (
    outbox: MemoryOutbox,
    options: { maxPayloadBytes?: number } = {},
    transport = memoryTransport(),
  ) => Publisher.layer(options).pipe(Layer.provide(transport), Layer.provide(outbox.layer))

  const good = (i: number): EventInput => ({ ...base, data: { i } })

  it("a batch with one bad event appends nothing, then commits nothing", async () => {
    const outbox = memoryOutbox()
    const bad: ReadonlyArray<EventInput> = [
      { ...base, data: (() => 1) as unknown as null },
      { ...base, tenant: "a.b" },
      { ...base, data: "x".repeat(2_000) },
      { ...base, headers: { a: 1 as unknown as string } },
      { ...base, id: "nope" },
    ]
    for (const b of bad) {
      const tx = outbox.begin()
      const e = await runFail(
        Publisher.use((p) => p.publish(tx, [good(1), b, good(2)])).pipe(
          Effect.provide(publisher(outbox, { maxPayloadBytes: 1_000 })),
        ),
      )
      expect(["InvalidEvent", "InvalidName", "PayloadTooLarge"]).toContain(e._tag)
      expect(tx.pending).toHaveLength(0)
      tx.commit()
    }
    expect(outbox.committed()).toHaveLength(0)
  })

  it("a good batch returns the ids in order and commits them in order", async () => {
    const outbox = memoryOutbox()
    const receipt = await outbox.transaction((tx) =>
      Effect.runPromise(
        Publisher.use((p) => p.publish(tx, [good(1), good(2), good(3)])).pipe(
          Effect.provide(publisher(outbox)),
        ),
      ),
    )
    expect(receipt.ids).toHaveLength(3)
    expect(outbox.committed().map((e: Envelope) => e.id)).toEqual(receipt.ids)
    expect(outbox.committed().map((e) => e.data)).toEqual([{ i: 1 }, { i: 2 }, { i: 3 }])
  })

  it("the transport's own payload limit applies when it is lower than the configured one", async () => {
    const outbox = memoryOutbox()
    const small = outboxTransport({ name: "small", capabilities: { maxPayloadBytes: 500 } })
    const tx = outbox.begin()
    const e = await runFail(
      Publisher.use((p) => p.publish(tx, { ...base, data: "x".repeat(500) })).pipe(
        Effect.provide(publisher(outbox, { maxPayloadBytes: 1_000_000 }, small)),
      ),
    )
    expect(e).toMatchObject({ _tag: "PayloadTooLarge", limit: 500 })
  })

  it("publish outside an open transaction of this outbox fails with NotInTransaction and appends nothing", async () => {
    const outbox = memoryOutbox()
    const other = memoryOutbox()
    const committed = outbox.begin()
    committed.commit()
    const rolledBack = outbox.begin()
    rolledBack.rollback()
    for (const tx of [undefined, {}, other.begin(), committed, rolledBack]) {
      const e = await runFail(
        Publisher.use((p) => p.publish(tx, good(1))).pipe(Effect.provide(publisher(outbox))),
      )
      expect(e._tag).toBe("NotInTransaction")
    }
    expect(outbox.committed()).toHaveLength(0)
  })
})

describe("decodeEnvelope", () => {
  it("reads back what the outbox stores (its JSON form)", async () => {
    const env = await run(
      makeEnvelope({ ...base, data: { a: [1, { b: "c" }] }, headers: { tracestate: "x=1" } }),
    )
    expect(await run(decodeEnvelope(JSON.parse(JSON.stringify(env))))).toEqual(env)
  })

  it("refuses anything that is not an envelope with InvalidEvent(reason decode)", async () => {
    const env = await run(makeEnvelope(base))
    const broken: ReadonlyArray<unknown> = [
      null,
      "x",
      { ...env, id: undefined },
      { ...env, headers: { a: 1 } },
      { ...env, time: 5 },
      { ...env, type: undefined },
    ]
    for (const u of broken) {
      const e = await runFail(decodeEnvelope(u))
      expect(e).toMatchObject({ _tag: "InvalidEvent", reason: "decode" })
    }
  })

  // Fails on the current code: decodeEnvelope checks names but not the id, so a row or
  // broker message whose id is not a UUIDv7 (the dedupe key) is accepted. See the report.
  it("refuses an envelope whose id is not a lower-case UUIDv7", async () => {
    const env = await run(makeEnvelope(base))
    for (const id of ["not-a-uuid", env.id.toUpperCase(), randomUUID()]) {
      const e = await runFail(decodeEnvelope({ ...env, id }))
      expect(e, id).toMatchObject({ _tag: "InvalidEvent" })
    }
  })
})
