import { createHash } from "node:crypto"
import { type Bus, type EventInput, isBusError } from "@bus/core"
import { uuidv7 } from "@bus/core/adapter"
import { describe, expect, it } from "vitest"
import {
  type Address,
  type Collector,
  dataField,
  event,
  rejectionOf,
  type Session,
  sentinelType,
  tagOf,
  uniqueAddress,
  waitFor,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

// Characters that JSON never escapes, of 1 to 4 UTF-8 bytes, so sizes are exact.
const fillUnits = ["€", "😀", "é", "中", "a", "ß", "ж", "🚀", "Z"]

/** A string of exactly `bytes` UTF-8 bytes mixing multi-byte characters, with no JSON escapes. */
export const utf8String = (bytes: number): string => {
  const parts: Array<string> = []
  let left = bytes
  let i = 0
  while (left >= 4) {
    const unit = fillUnits[i++ % fillUnits.length]!
    parts.push(unit)
    left -= Buffer.byteLength(unit, "utf8")
  }
  parts.push("x".repeat(left))
  return parts.join("")
}

/**
 * An event whose encoded envelope (compact JSON, UTF-8, as `@bus/core` measures it) is
 * exactly `bytes` long. The id is fixed so its length is known; `time` is always a
 * 24-character ISO string.
 */
export const eventOfSize = (
  address: Address,
  type: string,
  bytes: number,
  headers: Record<string, string> = {},
): EventInput & { readonly id: string } => {
  const id = uuidv7()
  const skeleton = {
    id,
    tenant: address.tenant,
    channel: address.channel,
    type,
    data: { blob: "" },
    headers,
    time: new Date().toISOString(),
  }
  const base = Buffer.byteLength(JSON.stringify(skeleton), "utf8")
  if (bytes < base) throw new Error(`cannot build a ${bytes}-byte event: the envelope alone is ${base} bytes`)
  return {
    tenant: address.tenant,
    channel: address.channel,
    type,
    data: { blob: utf8String(bytes - base) },
    headers,
    id,
  }
}

const circular = (): unknown => {
  const o: Record<string, unknown> = { a: 1 }
  o.self = o
  return o
}

/** A valid-looking input with one field replaced. */
const withField = (a: Address, field: string, value: unknown): unknown => ({
  ...event(a, "conformance.bad", { ok: true }),
  [field]: value,
})

interface BadCase {
  readonly label: string
  readonly input: (a: Address) => unknown
  readonly tag: string
}

const nameCases: ReadonlyArray<BadCase> = (["tenant", "channel"] as const).flatMap((field) =>
  (
    [
      ["empty", ""],
      ["dot", "a.b"],
      ["star", "*"],
      ["gt", ">"],
      ["space", "a b"],
      ["colon", "a:b"],
      ["non-ascii", "ä"],
      ["NUL", "a\u0000b"],
      ["65 chars", "a".repeat(65)],
      ["leading dash", "-a"],
      ["number", 42],
      ["null", null],
      ["undefined", undefined],
      ["object", { toString: () => "a" }],
    ] as const
  ).map(([label, value]) => ({
    label: `${field} ${label}`,
    input: (a: Address) => withField(a, field, value),
    tag: "InvalidName",
  })),
)

const dataCases: ReadonlyArray<BadCase> = (
  [
    ["function", () => 1],
    ["BigInt", 10n],
    ["NaN", Number.NaN],
    ["Infinity", Number.POSITIVE_INFINITY],
    ["-Infinity", Number.NEGATIVE_INFINITY],
    ["circular", circular()],
    ["Date", new Date()],
    ["Map", new Map([["a", 1]])],
    ["Set", new Set([1])],
    ["Symbol", Symbol("s")],
    ["Uint8Array", new Uint8Array([1, 2])],
    [
      "class instance",
      new (class Point {
        x = 1
      })(),
    ],
    ["nested function", { a: { b: [1, () => 2] } }],
    ["nested BigInt", [1, [2, [3n]]]],
    ["undefined in array", [1, undefined]],
  ] as const
).map(([label, value]) => ({
  label: `data ${label}`,
  input: (a: Address) => withField(a, "data", value),
  tag: "InvalidEvent",
}))

const shapeCases: ReadonlyArray<BadCase> = [
  { label: "headers value number", input: (a) => withField(a, "headers", { x: 1 }), tag: "InvalidEvent" },
  { label: "headers value null", input: (a) => withField(a, "headers", { x: null }), tag: "InvalidEvent" },
  { label: "headers value array", input: (a) => withField(a, "headers", { x: ["v"] }), tag: "InvalidEvent" },
  {
    label: "headers value object",
    input: (a) => withField(a, "headers", { x: { y: "v" } }),
    tag: "InvalidEvent",
  },
  { label: "headers a string", input: (a) => withField(a, "headers", "traceparent: x"), tag: "InvalidEvent" },
  { label: "headers an array", input: (a) => withField(a, "headers", [["x", "y"]]), tag: "InvalidEvent" },
  { label: "type missing", input: (a) => withField(a, "type", undefined), tag: "InvalidEvent" },
  { label: "type empty", input: (a) => withField(a, "type", ""), tag: "InvalidEvent" },
  { label: "type number", input: (a) => withField(a, "type", 7), tag: "InvalidEvent" },
  { label: "id not a uuid", input: (a) => withField(a, "id", "not-a-uuid"), tag: "InvalidEvent" },
  {
    label: "id a UUIDv4",
    input: (a) => withField(a, "id", "0b6d3f5e-8a2c-4f1e-9b7a-3c2d1e0f4a5b"),
    tag: "InvalidEvent",
  },
  { label: "event null", input: () => null, tag: "InvalidEvent" },
  { label: "event a string", input: () => "event", tag: "InvalidEvent" },
]

/**
 * Publishes `[good, bad, good]` (marked) plus `bad` alone inside one transaction that
 * then commits with a sentinel; the bad input must be refused with `tag`, and none of the
 * marked events may ever arrive.
 */
async function expectRefused(
  s: Session,
  bus: Bus,
  probeSub: Collector,
  c: { readonly label: string; readonly input: unknown; readonly tag: string },
  check: (error: unknown) => void = () => {},
): Promise<void> {
  const probe = probeSub.address
  const marker = `${c.label}`
  const batch = [
    event(probe, "conformance.marker", { marker, pos: 0 }),
    c.input,
    event(probe, "conformance.marker", { marker, pos: 2 }),
  ] as Array<EventInput>
  let inBatch: unknown
  let alone: unknown
  const sentinel = await s.target.transaction(async (tx) => {
    inBatch = await rejectionOf(() => bus.publish(tx, batch))
    alone = await rejectionOf(() => bus.publish(tx, c.input as EventInput))
    // The transaction is still usable and commits: nothing of the refused calls may be in it.
    return (await bus.publish(tx, event(probe, sentinelType, { marker }))).ids[0]!
  })
  for (const [where, error] of [
    ["in a batch", inBatch],
    ["alone", alone],
  ] as const) {
    expect(tagOf(error), `${c.label} (${where}): ${String(error)}`).toBe(c.tag)
    expect(isBusError(error), `${c.label}: a BusError`).toBe(true)
    expect((error as { retryable?: unknown }).retryable, `${c.label}: not retryable`).toBe(false)
    check(error)
  }
  await waitFor(() => probeSub.has(sentinel), s.ctx.deliveryTimeoutMs, `the sentinel after ${c.label}`)
  // The probe address belongs to this test: anything but sentinels on it was appended by a refused call.
  const appended = probeSub.events.filter((e) => e.type !== sentinelType)
  expect(appended, `${c.label}: nothing of the refused calls is appended`).toEqual([])
}

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex")

/** Invariants 6 and 7: bad input is refused with typed errors and changes nothing; large payloads arrive intact. */
export function inputTests(ctx: SuiteContext): void {
  const { target } = ctx
  const timeout = ctx.deliveryTimeoutMs

  const refusedCases = (title: string, cases: ReadonlyArray<BadCase>) =>
    it(title, async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const probeSub = await s.live(bus, uniqueAddress())
        for (const c of cases)
          await expectRefused(s, bus, probeSub, { ...c, input: c.input(probeSub.address) })
      }),
    )

  describe.concurrent("bad input", () => {
    refusedCases(
      "6a. invalid tenant/channel names: InvalidName, and a batch holding one appends nothing",
      nameCases,
    )
    refusedCases(
      "6b. non-JSON data (function, BigInt, NaN, circular, Date, …): InvalidEvent, nothing appended",
      dataCases,
    )
    refusedCases(
      "6c. malformed events (non-string headers, bad type or id): InvalidEvent, nothing appended",
      shapeCases,
    )

    it("6d. payload over the limit: PayloadTooLarge with bytes and limit, nothing appended", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const probeSub = await s.live(bus, uniqueAddress())
        const limit = bus.capabilities.maxPayloadBytes
        const cases = [
          {
            label: "one byte over the transport limit",
            input: eventOfSize(probeSub.address, "too.big", limit + 1),
          },
          { label: "twice the transport limit", input: eventOfSize(probeSub.address, "too.big", 2 * limit) },
        ]
        for (const c of cases) {
          await expectRefused(s, bus, probeSub, { ...c, tag: "PayloadTooLarge" }, (error) => {
            const e = error as { bytes: number; limit: number }
            expect(e.limit, "the limit in force is at most the transport's").toBeLessThanOrEqual(limit)
            expect(e.bytes, "the error tells the size").toBeGreaterThan(e.limit)
          })
        }
      }))

    it("6e. publish outside a transaction: NotInTransaction, nothing appended", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const probeSub = await s.live(bus, uniqueAddress())
        const notTx: ReadonlyArray<readonly [string, unknown]> = [
          ["undefined", undefined],
          ["null", null],
          ["a plain object", {}],
          ["a string", "tx"],
          ["a number", 1],
        ]
        for (const [label, tx] of notTx) {
          const marker = `not-tx ${label}`
          const error = await rejectionOf(() =>
            bus.publish(tx, [event(probeSub.address, "conformance.marker", { marker })]),
          )
          expect(tagOf(error), `${label}: ${String(error)}`).toBe("NotInTransaction")
          const sentinel = (await s.publish(bus, event(probeSub.address, sentinelType, { marker }))).ids[0]!
          await waitFor(() => probeSub.has(sentinel), timeout, "the sentinel")
          expect(probeSub.events.filter((e) => e.type !== sentinelType)).toEqual([])
        }
      }))
  })

  describe.concurrent("large payloads", () => {
    it("7. an event of the largest size the transport accepts arrives intact", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const a = uniqueAddress()
        const sub = await s.live(bus, a)
        const headers = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" }
        let size = target.largestPayloadBytes ?? bus.capabilities.maxPayloadBytes
        let input = eventOfSize(a, "conformance.large", size, headers)
        let id: string
        try {
          id = (await s.publish(bus, input)).ids[0]!
        } catch (error) {
          // The bus may be configured below the transport's limit (createBus maxPayloadBytes).
          const limit = (error as { limit?: unknown }).limit
          if (
            tagOf(error) !== "PayloadTooLarge" ||
            target.largestPayloadBytes !== undefined ||
            typeof limit !== "number"
          ) {
            throw error
          }
          console.log(
            `conformance[${target.name}] large payload: the bus limit is ${limit} bytes, below the transport's ${size}`,
          )
          size = limit
          input = eventOfSize(a, "conformance.large", size, headers)
          id = (await s.publish(bus, input)).ids[0]!
        }
        expect(id).toBe(input.id)
        await waitFor(() => sub.has(id), Math.max(timeout, 30_000), `the ${size}-byte event`)
        const got = sub.events.find((e) => e.id === id)!
        const blob = dataField(got, "blob")
        expect(typeof blob).toBe("string")
        const sent = (input.data as { blob: string }).blob
        expect((blob as string).length, "same length").toBe(sent.length)
        expect(sha256(blob as string), "same content").toBe(sha256(sent))
        expect(got.headers).toEqual(headers)
        const { cursor: _cursor, ...envelope } = got
        expect(Buffer.byteLength(JSON.stringify(envelope), "utf8"), "encoded size").toBe(size)
      }))
  })
}
