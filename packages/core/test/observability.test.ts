import { Effect, Layer, Metric, Tracer } from "effect"
import { describe, expect, it } from "vitest"
import { memoryBroker } from "../src/adapter.js"
import { createBus, type DeliveredEvent, memoryOutbox, Publisher } from "../src/index.js"

/**
 * Spans and metrics read back: a test tracer records every span the bus makes; metrics
 * come from Effect's metric registry (what any exporter reads).
 */

const recorder = () => {
  const spans: Array<Tracer.NativeSpan> = []
  const tracer = Tracer.make({
    span(options) {
      const span = new Tracer.NativeSpan(options)
      spans.push(span)
      return span
    },
  })
  return { spans, layer: Layer.succeed(Tracer.Tracer, tracer) as Layer.Layer<never> }
}

const until = async (condition: () => boolean, what: string, timeoutMs = 5_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

const counter = async (name: string, attributes: Record<string, string> = {}) => {
  const snapshot = await Effect.runPromise(Metric.snapshot)
  let total = 0
  for (const m of snapshot) {
    if (m.id !== name) continue
    if (!Object.entries(attributes).every(([k, v]) => m.attributes?.[k] === v)) continue
    const state = m.state as { count?: number | bigint }
    total += Number(state.count ?? 0)
  }
  return total
}

describe("observability", () => {
  it("publish, relay send and process spans follow the messaging conventions and are linked by traceparent", async () => {
    const { spans, layer } = recorder()
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      transport: { use: "memory-broker", broker: memoryBroker() },
      env: false,
      relay: { maxIdleMs: 20 },
      telemetry: layer,
    })
    const tenant = "acme"
    const channel = `obs${Date.now().toString(36)}`
    const handled: Array<DeliveredEvent> = []
    const consumer = bus.consume({ tenant, channel, group: "billing" }, (e) => {
      handled.push(e)
    })
    // The caller's own span: publish runs inside it, so the trace continues in the envelope.
    const tx = outbox.begin()
    const receipt = await bus.runtime.runPromise(
      Publisher.use((p) => p.publish(tx, { tenant, channel, type: "order.paid", data: { n: 1 } })).pipe(
        Effect.withSpan("checkout"),
      ),
    )
    tx.commit()
    await until(() => handled.length === 1, "the handler")
    await consumer.close()
    await bus.close()

    const byName = (name: string) => spans.filter((s) => s.name === name)
    const checkout = byName("checkout")[0]!
    const publish = byName(`publish ${channel}`)[0]!
    expect(publish.kind).toBe("producer")
    expect(publish.parent._tag === "Some" && publish.parent.value.spanId).toBe(checkout.spanId)
    expect(Object.fromEntries(publish.attributes)).toMatchObject({
      "messaging.system": "memory-broker",
      "messaging.operation.type": "send",
      "messaging.destination.name": `${tenant}/${channel}`,
      "messaging.message.id": receipt.ids[0],
    })
    // The envelope carries the publish span's context.
    const event = handled[0]!
    expect(event.headers.traceparent).toBe(`00-${publish.traceId}-${publish.spanId}-01`)

    const send = byName(`send ${channel}`)[0]!
    expect(send.kind).toBe("producer")
    expect(Object.fromEntries(send.attributes)).toMatchObject({
      "messaging.operation.type": "send",
      "messaging.message.id": receipt.ids[0],
    })
    expect(send.links[0]?.span.spanId).toBe(publish.spanId)

    const process = byName(`process ${channel}`)[0]!
    expect(process.kind).toBe("consumer")
    expect(Object.fromEntries(process.attributes)).toMatchObject({
      "messaging.system": "memory-broker",
      "messaging.operation.type": "process",
      "messaging.destination.name": `${tenant}/${channel}`,
      "messaging.consumer.group.name": "billing",
      "messaging.message.id": receipt.ids[0],
    })
    expect(process.links[0]?.span.spanId).toBe(publish.spanId)
    expect(process.links[0]?.span.traceId).toBe(checkout.traceId)
  })

  it("adds no traceparent when the caller has no span, and keeps one the event brings", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    const own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await outbox.transaction(async (tx) => {
      await bus.publish(tx, { tenant: "acme", channel: "plain", type: "a" })
      await bus.publish(tx, { tenant: "acme", channel: "plain", type: "b", headers: { traceparent: own } })
    })
    const [a, b] = outbox.committed()
    expect(a!.headers).toEqual({})
    expect(b!.headers.traceparent).toBe(own)
    await bus.close()
  })

  it("counts published, delivered, catch-up reads, forwarded, lag and inbox skips", async () => {
    const outbox = memoryOutbox()
    const broker = memoryOutbox()
    const before = {
      published: await counter("bus_events_published", { transport: "memory" }),
      delivered: await counter("bus_events_delivered", { transport: "memory" }),
      catchUp: await counter("bus_catchup_reads", { transport: "memory" }),
      forwarded: await counter("bus_relay_forwarded", { transport: "memory-broker" }),
      skipped: await counter("bus_inbox_skipped", { transport: "memory-broker" }),
      lag: await counter("bus_delivery_lag_ms", { transport: "memory" }),
    }
    let bus = await createBus({
      outbox,
      transport: { use: "memory", broker: memoryBroker(broker) },
      env: false,
    })
    const seen: Array<string> = []
    let consumer = bus.consume({ tenant: "acme", channel: "m", group: "g" }, (e) => {
      seen.push(e.id)
    })
    await outbox.transaction(async (tx) => {
      await bus.publish(
        tx,
        [1, 2, 3].map((i) => ({ tenant: "acme", channel: "m", type: "t", data: { i } })),
      )
    })
    for await (const _ of bus.subscribe({ tenant: "acme", channel: "m", from: "beginning" })) break
    await until(() => seen.length === 3, "memory group")
    await consumer.close()
    await bus.close()
    // The same group on the broker: the relay forwards all three; the group skips them.
    bus = await createBus({
      outbox,
      transport: { use: "memory-broker", broker: memoryBroker(broker) },
      env: false,
      relay: { maxIdleMs: 20 },
    })
    consumer = bus.consume({ tenant: "acme", channel: "m", group: "g" }, (e) => {
      seen.push(e.id)
    })
    await until(() => broker.committed().length === 3, "the relay")
    await new Promise((r) => setTimeout(r, 100))
    await consumer.close()
    await bus.close()
    expect(seen).toHaveLength(3)

    expect((await counter("bus_events_published", { transport: "memory" })) - before.published).toBe(3)
    expect(
      (await counter("bus_events_delivered", { transport: "memory" })) - before.delivered,
    ).toBeGreaterThanOrEqual(4)
    expect(
      (await counter("bus_catchup_reads", { transport: "memory" })) - before.catchUp,
    ).toBeGreaterThanOrEqual(1)
    expect((await counter("bus_relay_forwarded", { transport: "memory-broker" })) - before.forwarded).toBe(3)
    expect((await counter("bus_inbox_skipped", { transport: "memory-broker" })) - before.skipped).toBe(3)
    expect(
      (await counter("bus_delivery_lag_ms", { transport: "memory" })) - before.lag,
    ).toBeGreaterThanOrEqual(4)
  })
})
