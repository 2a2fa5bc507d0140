import { randomBytes } from "node:crypto"
import { runConformanceSuite } from "@bus/conformance"
import { type Bus, createBus } from "@bus/core"
import { type PostgresHandle, pauseFor, startPostgres } from "@bus/test-infra"
import { Effect, type ManagedRuntime } from "effect"
import pg from "pg"
import { PostgresOutbox } from "../src/adapter.js"
import { migrate, type PostgresOutboxService, postgresOutbox } from "../src/index.js"

// One Postgres and one outbox schema for the run, as one database serves every process;
// each bus the suite makes is another process over it, with its own pool and LISTEN
// connection (named, so the fault hook drops exactly the bus's connections).
let server: PostgresHandle | undefined
let producers: pg.Pool | undefined
const schema = "bus_conformance"
const listenerName = "bus-conformance-listener"
const poolName = "bus-conformance-pool"
const stores: Array<PostgresOutboxService> = []

// The outbox layer also provides PostgresOutbox, so the bus's runtime carries it.
const storeOf = (bus: Bus): Promise<PostgresOutboxService> =>
  (bus.runtime as unknown as ManagedRuntime.ManagedRuntime<PostgresOutbox, never>).runPromise(
    PostgresOutbox.use((s) => Effect.succeed(s)),
  )

runConformanceSuite({
  name: "postgres-notify",
  setup: async () => {
    server = await startPostgres()
    await migrate({ connectionString: server.url, schema })
    producers = new pg.Pool({
      connectionString: server.url,
      application_name: "bus-conformance-producer",
      max: 12,
    })
    producers.on("error", () => {})
  },
  teardown: async () => {
    await producers?.end().catch(() => {})
    await server?.stop()
  },
  makeBus: async () => {
    const pgn = postgresOutbox({
      connectionString: server!.url,
      schema,
      migrate: false,
      applicationName: poolName,
      listenerApplicationName: listenerName,
      reconnectInitialDelayMs: 50,
      reconnectMaxDelayMs: 1_000,
      pollIntervalMs: 2_000,
      poolSize: 4,
    })
    const bus = await createBus({
      outbox: pgn,
      env: false,
    })
    const store = await storeOf(bus)
    stores.push(store)
    const close = bus.close
    Object.defineProperty(bus, "close", {
      value: async () => {
        stores.splice(stores.indexOf(store), 1)
        await close()
      },
    })
    return bus
  },
  transaction: async (fn) => {
    const client = await producers!.connect()
    const ignore = () => {}
    client.on("error", ignore)
    let broken = false
    try {
      await client.query("BEGIN")
      const result = await fn(client)
      await client.query("COMMIT")
      return result
    } catch (error) {
      await client.query("ROLLBACK").catch(() => {
        broken = true
      })
      throw error
    } finally {
      client.removeListener("error", ignore)
      client.release(broken)
    }
  },
  faults: {
    // Every connection of every bus: the LISTEN connections and the stores' pools.
    killConnections: async () => {
      await server!.terminateConnections({ applicationName: listenerName })
      await server!.terminateConnections({ applicationName: poolName })
    },
    restartServer: () => server!.restart(),
    pauseServer: (ms) => pauseFor(server!, ms),
  },
  extraFaults: {
    // Anyone who can connect can NOTIFY our channels: garbage there must not break delivery.
    "malformed NOTIFY payloads from another writer on our channels": async () => {
      const channels = [...new Set(stores.flatMap((s) => s.watchedChannels()))]
      const payloads = [
        "",
        "garbage",
        "1:",
        "1:a:b:c",
        "2:acme:orders",
        "1:bad name:x",
        '{"id":"not-ours"}',
        "1:".padEnd(7_999, "x"),
        randomBytes(16).toString("base64"),
      ]
      const client = new pg.Client({
        connectionString: server!.url,
        application_name: "bus-conformance-intruder",
      })
      client.on("error", () => {})
      await client.connect()
      try {
        for (const channel of channels) {
          for (const payload of payloads) await client.query("SELECT pg_notify($1, $2)", [channel, payload])
        }
      } finally {
        await client.end().catch(() => {})
      }
      if (channels.length === 0) throw new Error("no watched channel to send malformed payloads to")
    },
  },
  pauseMs: Number(process.env.BUS_PAUSE_MS ?? 3_000),
})
