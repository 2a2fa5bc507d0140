import { createServer, type IncomingMessage } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Layer } from "effect"
import { FetchHttpClient } from "effect/http"
import { Otlp } from "effect/observability"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createBus, memoryOutbox, Publisher } from "../src/index.js"

/**
 * The OpenTelemetry bridge: Effect's own OTLP exporter (in `effect`, no extra dependency)
 * plugged into the bus with `telemetry`, sending to a local collector stand-in.
 */

const received: Array<{ path: string; body: unknown }> = []
let baseUrl = ""
const server = createServer((req: IncomingMessage, res) => {
  let body = ""
  req.on("data", (d: Buffer) => {
    body += d.toString()
  })
  req.on("end", () => {
    received.push({ path: req.url ?? "", body: JSON.parse(body || "{}") })
    res.writeHead(200, { "content-type": "application/json" }).end("{}")
  })
})

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve))
})

interface OtlpSpan {
  readonly name: string
  readonly spanId: string
  readonly kind: number
  readonly attributes: ReadonlyArray<{ key: string; value: Record<string, unknown> }>
  readonly links?: ReadonlyArray<{ spanId: string }>
}

const spans = (): Array<OtlpSpan> =>
  received
    .filter((r) => r.path === "/v1/traces")
    .flatMap((r) =>
      (
        (r.body as { resourceSpans?: Array<{ scopeSpans: Array<{ spans: Array<OtlpSpan> }> }> })
          .resourceSpans ?? []
      ).flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)),
    )

const attribute = (span: OtlpSpan, key: string) => {
  const v = span.attributes.find((a) => a.key === key)?.value
  return v === undefined ? undefined : Object.values(v)[0]
}

describe("OpenTelemetry export (effect/observability Otlp)", () => {
  it("exports the publish and process spans, linked, and the bus metrics", async () => {
    const telemetry = Otlp.layerJson({
      baseUrl,
      resource: { serviceName: "bus-otlp-test" },
      tracerExportInterval: "50 millis",
      metricsExportInterval: "50 millis",
    }).pipe(Layer.provide(FetchHttpClient.layer)) as Layer.Layer<never>
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
      telemetry,
    })
    const handled: Array<string> = []
    const consumer = bus.consume({ tenant: "acme", channel: "otlp", group: "g" }, (e) => {
      handled.push(e.id)
    })
    const tx = outbox.begin()
    await bus.runtime.runPromise(
      Publisher.use((p) => p.publish(tx, { tenant: "acme", channel: "otlp", type: "t" })).pipe(
        Effect.withSpan("request"),
      ),
    )
    tx.commit()
    while (handled.length === 0) await new Promise((r) => setTimeout(r, 10))
    await consumer.close()
    await bus.close()
    const deadline = Date.now() + 5_000
    while (!spans().some((s) => s.name === "process otlp") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20))
    }
    const publish = spans().find((s) => s.name === "publish otlp")!
    const process = spans().find((s) => s.name === "process otlp")!
    expect(publish).toBeDefined()
    expect(process).toBeDefined()
    expect(attribute(publish, "messaging.system")).toBe("memory")
    expect(attribute(process, "messaging.operation.type")).toBe("process")
    expect(attribute(process, "messaging.consumer.group.name")).toBe("g")
    expect(process.links?.[0]?.spanId).toBe(publish.spanId)
    const metricNames = received
      .filter((r) => r.path === "/v1/metrics")
      .flatMap((r) => JSON.stringify(r.body).match(/bus_[a-z_]+/g) ?? [])
    expect(metricNames).toEqual(expect.arrayContaining(["bus_events_published", "bus_events_delivered"]))
  })
})
