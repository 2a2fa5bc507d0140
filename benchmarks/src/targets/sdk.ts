import { type Bus, createBus, type EventInput, memoryOutbox, type Subscription } from "@bus/core"
import type { RelayOptions } from "@bus/core/adapter"
import {
  migrate,
  type NotifyMode,
  type PostgresOutboxService,
  postgresOutbox,
  postgresOutboxOf,
} from "@bus/postgres-notify"
import type pg from "pg"
import type { BenchEnv } from "../harness/env.js"
import { makePool } from "../harness/pg.js"
import type { TransportId } from "../harness/types.js"
import {
  eventData,
  type OpenRequest,
  type Pipe,
  PRIMER,
  padFor,
  readiness,
  type Session,
  tenant,
} from "./pipe.js"

/**
 * The SDK under test, used exactly as an application uses it: `createBus` (the Promise
 * facade), `publish(tx, event)` inside a `pg` transaction of the producer's own pool,
 * `subscribe({ tenant, channel, from: "now" })` as an async iterable. The broker
 * transports run with the Postgres outbox as source of truth and the relay in-process
 * (what `createBus` does by default).
 */

type Broker = import("@bus/core/adapter").Broker

/** Loads a broker package; a package that is missing or not built makes its transport unavailable. */
export const loadBroker = async (
  transport: "nats" | "redis-streams",
  env: BenchEnv,
): Promise<Broker | string> => {
  const unavailable = env.unavailable.get(transport)
  if (unavailable !== undefined) return unavailable
  try {
    if (transport === "nats") {
      const mod = await import("@bus/nats")
      return mod.nats({
        servers: env.nats?.url as string,
        subjectPrefix: "bench",
        connectOptions: { name: "bench-nats-sdk" },
      })
    }
    const mod = await import("@bus/redis-streams")
    return mod.redisStreams({ url: env.redis?.url as string, keyPrefix: "bench" })
  } catch (error) {
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error)
    return `@bus/${transport} could not be loaded (not built yet?): ${message}`
  }
}

export interface SdkBusOptions {
  readonly transport: TransportId
  readonly env: BenchEnv
  /** Outbox schema (default `bench_<transport>`). */
  readonly schema?: string
  /** The store's `notify` mode (default: `addresses` for postgres-notify, `none` for brokers). */
  readonly notify?: NotifyMode
  /** Open the LISTEN connection (default true). */
  readonly listen?: boolean
  /** Connection string for the store (another role, for per-role query counting). */
  readonly storeUrl?: string
  /** Connection string for the producer pool. */
  readonly producerUrl?: string
  readonly producerPoolSize?: number
  /** Relay options for brokers, or false. */
  readonly relay?: RelayOptions | false
}

export interface SdkBus {
  readonly bus: Bus
  readonly transport: TransportId
  /** The Postgres outbox behind the bus (undefined for memory). */
  readonly store: PostgresOutboxService | undefined
  readonly schema: string | undefined
  readonly producer: pg.Pool | undefined
  /** Commits `events` in one transaction of the producer's pool. */
  publish(events: readonly EventInput[], client?: pg.PoolClient): Promise<void>
  close(): Promise<void>
}

const migrated = new Set<string>()

export const openSdkBus = async (o: SdkBusOptions): Promise<SdkBus> => {
  if (o.transport === "memory") {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      env: false,
    })
    return {
      bus,
      transport: "memory",
      store: undefined,
      schema: undefined,
      producer: undefined,
      publish: async (events) => {
        await outbox.transaction((tx) => bus.publish(tx, events))
      },
      close: () => bus.close(),
    }
  }
  const broker: Broker | string | undefined =
    o.transport === "postgres-notify" ? undefined : await loadBroker(o.transport, o.env)
  if (typeof broker === "string") throw new Error(broker)
  const schema = o.schema ?? `bench_${o.transport.replace("-", "_")}`
  const url = o.storeUrl ?? o.env.pgUrl
  if (!migrated.has(schema)) {
    await migrate({ connectionString: o.env.pgUrl, schema })
    migrated.add(schema)
  }
  const notify = o.notify ?? (o.transport === "postgres-notify" ? "addresses" : "none")
  const bus = await createBus({
    outbox: postgresOutbox({
      connectionString: url,
      schema,
      migrate: false,
      notify,
      listen: o.listen ?? true,
      applicationName: `bench-store-${schema}`,
      listenerApplicationName: `bench-listener-${schema}`,
    }),
    transport: { use: o.transport, ...(broker !== undefined ? { broker } : {}) },
    env: false,
    ...(o.relay !== undefined ? { relay: o.relay } : {}),
  })
  const store = await postgresOutboxOf(bus)
  const producer = makePool({
    connectionString: o.producerUrl ?? o.env.pgUrl,
    application_name: "bench-producer",
    max: o.producerPoolSize ?? 16,
  })
  producer.on("error", () => undefined)
  const publish = async (events: readonly EventInput[], given?: pg.PoolClient): Promise<void> => {
    const client = given ?? (await producer.connect())
    try {
      await client.query("BEGIN")
      await bus.publish(client, events)
      await client.query("COMMIT")
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined)
      throw error
    } finally {
      if (given === undefined) client.release()
    }
  }
  return {
    bus,
    transport: o.transport,
    store,
    schema,
    producer,
    publish,
    close: async () => {
      await bus.close()
      await producer.end().catch(() => undefined)
    },
  }
}

/** Subscribes `count` receivers to one address; each delivered event goes to `onEvent`. */
export const subscribeMany = (
  bus: Bus,
  channel: string,
  count: number,
  onEvent: (data: { s: number; t: number }, subscriber: number) => void,
  errors: string[],
): Subscription[] => {
  const subs: Subscription[] = []
  for (let i = 0; i < count; i++) {
    const sub = bus.subscribe({ tenant, channel, from: "now" })
    subs.push(sub)
    ;(async () => {
      for await (const event of sub) onEvent(event.data as { s: number; t: number }, i)
    })().catch((error: unknown) => {
      if (errors.length < 10) errors.push(error instanceof Error ? error.message : String(error))
    })
  }
  return subs
}

/** The SDK as a {@link Pipe}. */
export const sdkPipe = (
  transport: TransportId,
  env: BenchEnv,
  options: Partial<SdkBusOptions> = {},
): Pipe => {
  let opened: Promise<SdkBus> | undefined
  const get = () => {
    opened ??= openSdkBus({ transport, env, ...options })
    return opened
  }
  return {
    id: transport,
    label: `${transport} (SDK)`,
    transport,
    kind: "sdk",
    maxSubscribers: Number.POSITIVE_INFINITY,
    open: async (r: OpenRequest): Promise<Session> => {
      const sdk = await get()
      const errors: string[] = []
      const ready = readiness(r.subscribers, r.onReceive)
      const subs = subscribeMany(
        sdk.bus,
        r.channel,
        r.subscribers,
        (d, i) => ready.onReceive(d.s, d.t, i, performance.now()),
        errors,
      )
      const pad = padFor(r.payloadBytes)
      const send = (seqs: readonly number[], intendedAt: number) =>
        sdk.publish(
          seqs.map((s) => ({
            tenant,
            channel: r.channel,
            type: "bench.event",
            data: eventData(s, intendedAt, pad),
          })),
        )
      try {
        await ready.waitLive(() => send([PRIMER], performance.now()), r.readyTimeoutMs)
      } catch (error) {
        await Promise.all(subs.map((s) => s.close()))
        const cause = errors[0] !== undefined ? ` (subscription failed: ${errors[0]})` : ""
        throw new Error(`${error instanceof Error ? error.message : String(error)}${cause}`)
      }
      return {
        send,
        errors,
        close: async () => {
          await Promise.all(subs.map((s) => s.close()))
        },
      }
    },
    close: async () => {
      if (opened !== undefined) await (await opened.catch(() => undefined))?.close()
      opened = undefined
    },
  }
}
