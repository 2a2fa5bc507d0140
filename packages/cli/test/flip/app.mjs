// The application of the flip tests. Every run of every phase executes this same file; only
// the environment differs between runs (BUS_TRANSPORT, or BUS_NOTIFY_RATE with BUS_BROKER).
//
//   node app.mjs producer   publishes in transactions (a business row + 1-3 events, some rolled
//                           back) until SIGTERM; logs what it committed and rolled back
//   node app.mjs consumer   one subscription per address (resuming from the cursor it saved) and
//                           consumer groups; logs what it received and handled; saves its cursors
//                           on SIGTERM
//
// Logs are NDJSON files the test reads afterwards.
import { createWriteStream, existsSync, readFileSync, writeFileSync } from "node:fs"
import { createBus } from "@bus/core"
import { postgresOutbox } from "@bus/postgres-notify"
import pg from "pg"

const env = process.env
const role = process.argv[2]
const addresses = JSON.parse(env.FLIP_ADDRESSES)
const groups = JSON.parse(env.FLIP_GROUPS ?? '["billing","audit"]')
const log = createWriteStream(env.FLIP_LOG, { flags: "a" })
const write = (record) => log.write(`${JSON.stringify(record)}\n`)
let stopping = false
const stopped = new Promise((resolve) => {
  process.once("SIGTERM", () => {
    stopping = true
    resolve()
  })
})
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** The bus, exactly as an application builds it: every transport it ships, one selected by configuration. */
const startBus = async () => {
  // Every broker it ships, passed by name; BUS_TRANSPORT or BUS_BROKER picks one.
  const broker = []
  if (env.REDIS_URL) {
    const { redisStreams } = await import("@bus/redis-streams")
    broker.push(redisStreams({ url: env.REDIS_URL, blockMs: 500 }))
  }
  if (env.NATS_URL) {
    const { nats } = await import("@bus/nats")
    broker.push(nats({ servers: env.NATS_URL }))
  }
  return createBus({
    outbox: postgresOutbox({ connectionString: env.DATABASE_URL, pollIntervalMs: 2_000, pressure: false }),
    transport: { broker },
    relay: { maxIdleMs: 200 },
  })
}

const producer = async () => {
  const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: 3, application_name: "flip-producer" })
  pool.on("error", () => {})
  const bus = await startBus()
  const pauseMs = Number(env.FLIP_PAUSE_MS ?? 5)
  let n = 0
  const worker = async (w) => {
    while (!stopping) {
      const client = await pool.connect()
      try {
        await client.query("BEGIN")
        const address = addresses[Math.floor(Math.random() * addresses.length)]
        const size = 1 + Math.floor(Math.random() * 3)
        const order = await client.query("INSERT INTO flip_orders (producer) VALUES ($1) RETURNING id", [
          env.FLIP_NAME,
        ])
        const { ids } = await bus.publish(
          client,
          Array.from({ length: size }, (_, i) => ({
            ...address,
            type: "order.paid",
            data: { order: order.rows[0].id, producer: env.FLIP_NAME, worker: w, n: n++, i },
          })),
        )
        if (Math.random() < 0.05) {
          await client.query("ROLLBACK")
          write({ rolledBack: ids })
        } else {
          await client.query("COMMIT")
          write({ committed: ids, address })
        }
      } catch (error) {
        await client.query("ROLLBACK").catch(() => {})
        if (!stopping) write({ error: String(error) })
      } finally {
        client.release()
      }
      await sleep(pauseMs)
    }
  }
  await Promise.all([worker(0), worker(1)])
  await bus.close()
  await pool.end()
}

const consumer = async () => {
  const saved = existsSync(env.FLIP_STATE) ? JSON.parse(readFileSync(env.FLIP_STATE, "utf8")) : {}
  const cursors = { ...saved }
  const bus = await startBus()
  const keyOf = (a) => `${a.tenant}/${a.channel}`
  const subscriptions = addresses.map((address) => {
    const key = keyOf(address)
    const from = saved[key] ?? "beginning"
    const subscription = bus.subscribe({ ...address, from })
    const reading = (async () => {
      for await (const event of subscription) {
        write({ sub: key, id: event.id, cursor: event.cursor })
        // The application keeps its cursor after it processed the event.
        cursors[key] = event.cursor
      }
    })()
    return { subscription, reading, from, key }
  })
  await Promise.all(subscriptions.map((s) => s.subscription.ready))
  const consumers = addresses.flatMap((address) =>
    groups.map((group) =>
      bus.consume({ ...address, group }, (event, attempt) => {
        write({ group, address: keyOf(address), id: event.id, attempt })
      }),
    ),
  )
  write({
    started: env.BUS_TRANSPORT ?? "",
    from: Object.fromEntries(subscriptions.map((s) => [s.key, s.from])),
  })
  process.stdout.write(`ready ${bus.selection.transport}\n`)
  await stopped
  await Promise.all([...subscriptions.map((s) => s.subscription.close()), ...consumers.map((c) => c.close())])
  await Promise.all(subscriptions.map((s) => s.reading.catch(() => {})))
  writeFileSync(env.FLIP_STATE, JSON.stringify(cursors))
  await bus.close()
}

try {
  if (role === "producer") await producer()
  else if (role === "consumer") await consumer()
  else throw new Error(`unknown role ${role}`)
} catch (error) {
  write({ fatal: String(error?.stack ?? error) })
  process.exitCode = 1
} finally {
  await new Promise((resolve) => log.end(resolve))
}
