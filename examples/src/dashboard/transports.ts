import { ConfigError } from "@bus/core"
import {
  type Broker as BusBroker,
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
  type TransportName,
} from "@bus/core/adapter"
import { type ServerHandle, startNats, startRedis } from "@bus/test-infra"

/**
 * Which transport the demo runs on, and the broker server it needs. The producer and the
 * dashboard do not change with it: only the `transport` option handed to `createBus` does.
 *
 * @module
 */

/** A transport the demo can run on. */
export type DemoTransport = Exclude<TransportName, "memory">

export const demoTransports: ReadonlyArray<DemoTransport> = ["postgres-notify", "nats", "redis-streams"]

/** Thrown for a choice the demo cannot honour on this machine; `message` says what to do. */
export class DemoSetupError extends Error {
  override readonly name = "DemoSetupError"
}

/** The bus selection of the demo: an explicit `--transport`, or `auto` with the producer's notify rate. */
export const demoSelection = (
  transport: DemoTransport | undefined,
  notifyRate: number,
): { readonly selection: SelectionConfig; readonly env: false | undefined } =>
  transport !== undefined
    ? // An explicit flag wins over BUS_* variables.
      { selection: { transport }, env: false }
    : // Otherwise the way an application would run: auto, overridable with BUS_TRANSPORT etc.
      { selection: { transport: "auto", notifyRate, broker: "nats" }, env: undefined }

/** What the selection resolves to, before anything starts (same rule as `createBus`). */
export const resolveDemoSelection = (
  selection: SelectionConfig,
  env: false | undefined,
): TransportChoice & { readonly transport: DemoTransport } => {
  const config = env === false ? selection : selectionFromEnv(selection, process.env)
  if (config instanceof ConfigError) throw new DemoSetupError(config.message)
  const choice = selectTransport(config)
  if (choice instanceof ConfigError) throw new DemoSetupError(choice.message)
  if (choice.transport === "memory") {
    throw new DemoSetupError("the demo needs a durable transport: postgres-notify, nats or redis-streams")
  }
  return choice as TransportChoice & { readonly transport: DemoTransport }
}

/** A broker started for the demo, with the `createBus` broker that talks to it. */
export interface Broker {
  readonly name: "nats" | "redis-streams"
  readonly url: string
  readonly broker: BusBroker
  readonly server: ServerHandle
}

const missingPackage = (pkg: string, error: unknown) =>
  new DemoSetupError(
    `--transport needs the ${pkg} package, which could not be loaded (${error instanceof Error ? error.message : String(error)}).\n` +
      `  Build the workspace first: pnpm install && pnpm build (pnpm demo does this for you).`,
  )

const startServer = async (start: () => Promise<ServerHandle>, binary: string) => {
  try {
    return await start()
  } catch (error) {
    if (error instanceof Error && error.name === "MissingBinaryError") {
      throw new DemoSetupError(
        `this transport needs ${binary}, which is not installed: ${error.message}\n` +
          "  (or point the demo at a running server with BUS_NATS_URL / BUS_REDIS_URL)",
      )
    }
    throw error
  }
}

/** Starts the broker of `transport` through test-infra; `undefined` for postgres-notify. */
export const startBroker = async (transport: DemoTransport): Promise<Broker | undefined> => {
  if (transport === "nats") {
    let mod: typeof import("@bus/nats")
    try {
      mod = await import("@bus/nats")
    } catch (error) {
      throw missingPackage("@bus/nats", error)
    }
    const server = await startServer(startNats, "nats-server (apt-get install -y nats-server)")
    return {
      name: "nats",
      url: server.url,
      server,
      // The demo's data is thrown away at exit: memory storage keeps the broker's disk quiet.
      broker: mod.nats({ servers: server.url, stream: { storage: "memory" } }),
    }
  }
  if (transport === "redis-streams") {
    let mod: typeof import("@bus/redis-streams")
    try {
      mod = await import("@bus/redis-streams")
    } catch (error) {
      throw missingPackage("@bus/redis-streams", error)
    }
    const server = await startServer(
      () => startRedis({ appendOnly: false }),
      "redis-server (apt-get install -y redis-server)",
    )
    return {
      name: "redis-streams",
      url: server.url,
      server,
      broker: mod.redisStreams({ url: server.url }),
    }
  }
  return undefined
}

/** One line for the dashboard: how events travel on this transport. */
export const howItTravels = (transport: DemoTransport): string =>
  transport === "postgres-notify"
    ? "Producers append to the Postgres outbox in their own transaction; at commit one small NOTIFY " +
      "per address wakes the listener, and subscribers read the outbox from their snapshot cursor."
    : transport === "nats"
      ? "Producers append to the Postgres outbox in their own transaction; the relay forwards committed " +
        "rows to NATS JetStream (Nats-Msg-Id = event id, so re-sends are dropped); subscribers read JetStream."
      : "Producers append to the Postgres outbox in their own transaction; the relay forwards committed " +
        "rows to Redis Streams with an atomic dedupe by event id; subscribers read the stream."
