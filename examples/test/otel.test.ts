import { type Bus, createBus } from "@bus/core"
import { postgresOutbox } from "@bus/postgres-notify"
import { type PostgresHandle, startPostgres } from "@bus/test-infra"
import * as OtelTracer from "@effect/opentelemetry/OtelTracer"
import { context, trace } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

/**
 * An application that runs the OpenTelemetry Node SDK (its own tracer provider, exporter and
 * async-hooks context) and hands @bus its global tracer with one layer
 * (`OtelTracer.layerGlobal` of `@effect/opentelemetry`). Through the Promise API, with no
 * manual headers: the publish span is a child of the application's span, the event carries
 * its `traceparent`, the consumer's `process` span links to the publish span, and spans the
 * application starts inside its handler are children of `process`.
 */

const exporter = new InMemorySpanExporter()
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
let postgres: PostgresHandle
let bus: Bus
let pool: pg.Pool

beforeAll(async () => {
  // What the application's telemetry setup does (the Node SDK's start() does the same).
  provider.register()
  postgres = await startPostgres()
  pool = new pg.Pool({ connectionString: postgres.url, max: 2 })
  const pgn = postgresOutbox({ connectionString: postgres.url, pressure: false })
  bus = await createBus({
    outbox: pgn,
    env: false,
    telemetry: OtelTracer.layerGlobal,
  })
})

afterAll(async () => {
  await bus?.close()
  await pool?.end()
  await postgres?.stop()
  await provider.shutdown()
  trace.disable()
  context.disable()
})

const spanNamed = (name: string): ReadableSpan => {
  const found = exporter.getFinishedSpans().filter((s) => s.name === name)
  expect(found, `one ${name} span`).toHaveLength(1)
  return found[0]!
}

describe("OpenTelemetry with the application's own SDK", () => {
  it("parents @bus spans to the application's spans and carries traceparent end to end, with no manual headers", async () => {
    const tracer = trace.getTracer("app")
    const handled = new Promise<{ traceparent: string | undefined }>((resolve) => {
      bus.consume({ tenant: "acme", channel: "otel", group: "billing" }, async (event) => {
        // The application's own span inside its handler.
        await tracer.startActiveSpan("charge card", async (span) => {
          span.end()
        })
        resolve({ traceparent: event.headers.traceparent })
      })
    })
    let appTraceId = ""
    let appSpanId = ""
    await tracer.startActiveSpan("POST /orders", async (span) => {
      appTraceId = span.spanContext().traceId
      appSpanId = span.spanContext().spanId
      const client = await pool.connect()
      try {
        await client.query("BEGIN")
        await bus.publish(client, {
          tenant: "acme",
          channel: "otel",
          type: "order.paid",
          data: { orderId: 1 },
        })
        await client.query("COMMIT")
      } finally {
        client.release()
        span.end()
      }
    })
    const { traceparent } = await handled
    await new Promise((r) => setTimeout(r, 200))

    const publish = spanNamed("publish otel")
    expect(publish.spanContext().traceId).toBe(appTraceId)
    expect(publish.parentSpanContext?.spanId).toBe(appSpanId)
    expect(publish.attributes["messaging.system"]).toBe("postgres-notify")
    // The event carries the publish span's context.
    expect(traceparent).toBe(`00-${appTraceId}-${publish.spanContext().spanId}-01`)

    const processSpan = spanNamed("process otel")
    expect(processSpan.links.map((l) => l.context.spanId)).toContain(publish.spanContext().spanId)
    expect(processSpan.attributes["messaging.consumer.group.name"]).toBe("billing")
    const charge = spanNamed("charge card")
    expect(charge.parentSpanContext?.spanId).toBe(processSpan.spanContext().spanId)
    expect(charge.spanContext().traceId).toBe(processSpan.spanContext().traceId)
  })
})
