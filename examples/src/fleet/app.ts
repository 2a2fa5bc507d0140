/**
 * One application process of a fleet: it produces, relays and consumes through one bus, as
 * every replica of a deployed service would. Several of these share one Postgres outbox and
 * one broker; nothing but configuration tells them apart.
 *
 * - The relay runs in-process (the default for a bus that selects a broker) with `owner` set
 *   to the process's name, so an operator (and the fleet test) can see in
 *   `bus.relay_partitions` which process relays which partitions. Relays share the outbox's
 *   partitions fairly: a process that joins takes a share, a dead one's share is taken over
 *   when its lease runs out.
 * - Every process is a member of the same consumer group (`fleet`) on every tenant's
 *   channel: the broker shares the group's work among the live members and hands a dead
 *   member's unacknowledged deliveries to the others.
 * - `relayWake: "notify"`: an append wakes the relays of the other processes too (one small
 *   NOTIFY after the commit, outside the producer's transaction), since the partition an
 *   event lands in is most often relayed elsewhere.
 *
 * - Every other event is published with the SQL function `bus.publish(…)` instead of the
 *   SDK's `publish`, as a database trigger or a service in another language would.
 *
 * Configuration comes from the environment (`DATABASE_URL`, `BUS_BROKER` = `nats` or
 * `redis-streams`, `BROKER_URL`, `FLEET_NAME`, `FLEET_CHANNEL`, `FLEET_TENANTS`,
 * `FLEET_RATE` events/s, `FLEET_LEASE_MS`). It reports on stdout, one JSON object per line:
 * `ready`, `handled` (after a handler finished), `published` counts and `stopped`. SIGUSR2
 * stops producing; SIGTERM closes the bus and exits.
 *
 * Run: `DATABASE_URL=… BUS_BROKER=nats BROKER_URL=127.0.0.1:4222 node --import tsx src/fleet/app.ts`
 */
import { createBus } from "@bus/core"
import { nats } from "@bus/nats"
import { postgresOutbox } from "@bus/postgres-notify"
import { redisStreams } from "@bus/redis-streams"
import pg from "pg"

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback
  if (value === undefined) throw new Error(`fleet app: ${name} is required`)
  return value
}

const name = env("FLEET_NAME", `app-${process.pid}`)
const broker = env("BUS_BROKER") as "nats" | "redis-streams"
const brokerUrl = env("BROKER_URL")
const channel = env("FLEET_CHANNEL", "orders")
const tenants = Array.from({ length: Number(env("FLEET_TENANTS", "12")) }, (_, i) => `t${i}`)
const rate = Number(env("FLEET_RATE", "50"))
const leaseMs = Number(env("FLEET_LEASE_MS", "3000"))

const report = (line: Record<string, unknown>) =>
  process.stdout.write(`${JSON.stringify({ name, ...line })}\n`)

const bus = await createBus({
  outbox: postgresOutbox({ connectionString: env("DATABASE_URL"), relayWake: "notify" }),
  transport: {
    use: broker,
    broker:
      broker === "nats"
        ? nats({ servers: brokerUrl, ackWaitMs: leaseMs })
        : redisStreams({ url: brokerUrl, claimIdleMs: leaseMs }),
  },
  env: false,
  relay: { owner: name, leaseMs },
})

const consumers = tenants.map((tenant) =>
  bus.consume({ tenant, channel, group: "fleet" }, (event) => {
    report({ kind: "handled", id: event.id, tenant: event.tenant })
  }),
)

const pool = new pg.Pool({ connectionString: env("DATABASE_URL"), max: 2 })
let producing = true
let published = 0
const produce = async () => {
  let seq = 0
  while (producing) {
    const tenant = tenants[seq % tenants.length]!
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      // Every other event is published from SQL (as a trigger or another language would):
      // the fleet delivers both alike.
      if (seq % 2 === 0)
        await bus.publish(client, { tenant, channel, type: "fleet.tick", data: { producer: name, seq } })
      else
        await client.query("SELECT bus.publish($1, $2, 'fleet.tick', $3)", [
          tenant,
          channel,
          JSON.stringify({ producer: name, seq, from: "sql" }),
        ])
      await client.query("COMMIT")
      published++
    } catch (e) {
      await client.query("ROLLBACK").catch(() => {})
      report({ kind: "error", message: String(e) })
    } finally {
      client.release()
    }
    seq++
    await new Promise((r) => setTimeout(r, 1_000 / rate))
  }
}
const producing$ = produce()
report({ kind: "ready" })

process.on("SIGUSR2", () => {
  producing = false
  void producing$.then(() => report({ kind: "published", count: published }))
})
process.on("SIGTERM", () => {
  producing = false
  void (async () => {
    await producing$
    await Promise.all(consumers.map((c) => c.close()))
    await bus.close()
    await pool.end()
    report({ kind: "stopped", published })
    process.exit(0)
  })()
})
