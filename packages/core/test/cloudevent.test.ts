import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  type Envelope,
  fromCloudEvent,
  type Json,
  makeEnvelope,
  toCloudEvent,
  uuidv7,
} from "../src/adapter.js"
import { run, runFail } from "./support.js"

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
const tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"

const sample = (): Promise<Envelope> =>
  run(
    makeEnvelope({
      tenant: "acme",
      channel: "orders",
      type: "order.paid",
      data: { id: 7, lines: [{ sku: "a", qty: 2 }], note: "ünïcödé 😀" },
      headers: {
        traceparent,
        tracestate,
        "X-Request-Id": "r-1",
        "content-type": "x",
        "a.b": "c",
        "": "empty name",
      },
    }),
  )

/** Through the wire: structured-mode CloudEvents are JSON documents. */
const wire = <A>(a: A): unknown => JSON.parse(JSON.stringify(a))

describe("toCloudEvent", () => {
  it("maps the envelope to CloudEvents 1.0 structured JSON, tracing headers as the W3C extension", async () => {
    const env = await sample()
    const ce = toCloudEvent(env)
    expect(ce).toEqual({
      specversion: "1.0",
      id: env.id,
      source: "/bus/acme/orders",
      type: "order.paid",
      time: env.time,
      datacontenttype: "application/json",
      data: env.data,
      bustenant: "acme",
      buschannel: "orders",
      busheaders: JSON.stringify({
        "X-Request-Id": "r-1",
        "content-type": "x",
        "a.b": "c",
        "": "empty name",
      }),
      traceparent,
      tracestate,
    })
  })

  it("omits busheaders and tracing attributes when there are none; honours a given source", async () => {
    const env = await run(makeEnvelope({ tenant: "t", channel: "c", type: "x" }))
    const ce = toCloudEvent(env, "urn:app:billing")
    expect(ce.source).toBe("urn:app:billing")
    expect("busheaders" in ce).toBe(false)
    expect("traceparent" in ce).toBe(false)
    expect("tracestate" in ce).toBe(false)
    expect(ce.data).toBeNull()
  })
})

describe("CloudEvents round trip", () => {
  it("envelope → CloudEvent → JSON → envelope is the identity, headers included", async () => {
    const env = await sample()
    expect(await run(fromCloudEvent(wire(toCloudEvent(env))))).toEqual(env)
  })

  it("holds for arbitrary JSON data and arbitrary string headers (property)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.jsonValue(),
        fc.dictionary(
          fc.string().filter((k) => k !== "__proto__"),
          fc.string(),
        ),
        fc.option(fc.string(), { nil: undefined }),
        async (data, headers, tp) => {
          const h = tp === undefined ? headers : { ...headers, traceparent: tp }
          const env = await run(
            makeEnvelope({ tenant: "t", channel: "c", type: "x", data: data as Json, headers: h }),
          )
          const back = await run(fromCloudEvent(wire(toCloudEvent(env))))
          expect(back).toEqual(wire(env))
        },
      ),
      { numRuns: 300 },
    )
  })
})

describe("fromCloudEvent rejects malformed input", () => {
  const valid = async () => wire(toCloudEvent(await sample())) as Record<string, unknown>

  it("with InvalidEvent(reason cloudevent) for missing or mistyped attributes", async () => {
    const ce = await valid()
    const broken: ReadonlyArray<unknown> = [
      null,
      "event",
      42,
      [],
      { ...ce, specversion: undefined },
      { ...ce, specversion: "0.3" },
      { ...ce, specversion: 1 },
      { ...ce, id: undefined },
      { ...ce, id: 5 },
      { ...ce, type: undefined },
      { ...ce, time: undefined },
      { ...ce, bustenant: undefined },
      { ...ce, buschannel: 1 },
      { ...ce, busheaders: "{not json" },
      { ...ce, busheaders: JSON.stringify({ a: 1 }) },
      { ...ce, busheaders: JSON.stringify(["a"]) },
      { ...ce, busheaders: { a: "b" } },
      { ...ce, traceparent: 1 },
      { ...ce, tracestate: null },
    ]
    for (const u of broken) {
      const e = await runFail(fromCloudEvent(u))
      expect(e, JSON.stringify(u)).toMatchObject({ _tag: "InvalidEvent", reason: "cloudevent" })
    }
  })

  it("with InvalidName for tenant or channel names that break the naming rule", async () => {
    const ce = await valid()
    for (const [k, v] of [
      ["bustenant", "a.b"],
      ["bustenant", ""],
      ["buschannel", "*"],
      ["buschannel", "x:y"],
    ] as const) {
      const e = await runFail(fromCloudEvent({ ...ce, [k]: v }))
      expect(e._tag).toBe("InvalidName")
    }
  })

  it("a missing data attribute becomes null", async () => {
    const ce = await valid()
    const { data: _omitted, ...rest } = ce
    expect((await run(fromCloudEvent(rest))).data).toBeNull()
  })

  // Fails on the current code: fromCloudEvent accepts any string as the id, so a
  // CloudEvent from another producer yields an envelope whose id is not the UUIDv7 the
  // Envelope type documents (and that makeEnvelope enforces). See the report.
  it("with InvalidEvent when the id is not a UUIDv7 (the id is the dedupe key)", async () => {
    const ce = await valid()
    for (const id of ["not-a-uuid", "", uuidv7().toUpperCase()]) {
      const e = await runFail(fromCloudEvent({ ...ce, id }))
      expect(e, id).toMatchObject({ _tag: "InvalidEvent" })
    }
  })
})
