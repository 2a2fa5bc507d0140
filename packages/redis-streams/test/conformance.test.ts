import { runConformanceSuite } from "@bus/conformance"
import { createBus, memoryOutbox } from "@bus/core"
import { type Envelope, runRelay, type SendMeta, sendEach, Transport } from "@bus/core/adapter"
import { pauseFor, type ServerHandle, startRedis } from "@bus/test-infra"
import { Effect, Layer, ManagedRuntime } from "effect"
import { Redis } from "ioredis"
import { redisStreamsTransport } from "../src/adapter.js"
import type { RedisStreamsOptions } from "../src/index.js"
import { redisStreams } from "../src/index.js"
import { killableStore, waitFor } from "./support.js"

// One outbox for the whole run, as one database serves every process: each bus the
// suite makes is another "process" over it.
const outbox = memoryOutbox()
let server: ServerHandle | undefined
let admin: Redis | undefined

const options = (): RedisStreamsOptions => ({ url: server!.url, blockMs: 500, claimIdleMs: 10_000 })

/**
 * The relay runs as a process of its own (the buses are made with `relay: false`), one
 * at a time, as a deployment with a dedicated relay process would. The relay can be told
 * to hang after its next send, so the fault below kills it mid-batch: its store is then
 * cut off (`killableStore`), so, as for a process that died, its partitions stay leased
 * until the lease runs out and the next relay resumes from their stored positions.
 */
interface RelayProcess {
  readonly armed: { value: boolean; hung: boolean }
  /** Kills the relay: nothing more of it reaches the outbox, then its runtime is disposed. */
  kill(): Promise<void>
  dispose(): Promise<void>
}
let relay: RelayProcess | undefined

const startRelay = (owner: string): RelayProcess => {
  const armed = { value: false, hung: false }
  const transport = Layer.effect(
    Transport,
    Effect.gen(function* () {
      const inner = yield* Transport
      const send = (event: Envelope, meta?: SendMeta) =>
        inner.send(event, meta).pipe(
          Effect.andThen(
            Effect.suspend(() => {
              if (!armed.value) return Effect.void
              armed.hung = true
              return Effect.never
            }),
          ),
        )
      return Transport.of({ ...inner, send, sendAll: sendEach(send) })
    }),
  ).pipe(Layer.provide(redisStreamsTransport(options())))
  const store = killableStore(outbox)
  const runtime = ManagedRuntime.make(Layer.merge(transport, store.layer))
  // Pages large enough to hold every waiting row, so a killed page never splits a
  // transaction; short leases, so a killed relay's partitions are taken over within seconds.
  runtime.runFork(runRelay({ owner, batchSize: 100_000, leaseMs: 2_000, maxIdleMs: 100 }))
  return {
    armed,
    kill: () => {
      store.kill()
      return runtime.dispose()
    },
    dispose: () => runtime.dispose(),
  }
}

/**
 * The test-infra server runs with `appendonly yes` and `appendfsync no`: every write
 * reaches the kernel before Redis replies, so a killed or restarted redis-server loses
 * nothing; only an OS crash could. Production should run `everysec` (or `always`); set
 * here, so the restart scenario runs with the recommended setting.
 */
const recommendedPersistence = async () => {
  await admin!.config("SET", "appendfsync", "everysec")
}

runConformanceSuite({
  name: "redis-streams",
  setup: async () => {
    server = await startRedis({ appendOnly: true })
    admin = new Redis(server.url, { maxRetriesPerRequest: null })
    admin.on("error", () => {})
    await recommendedPersistence()
    relay = startRelay("relay-1")
  },
  teardown: async () => {
    await relay?.dispose()
    await admin?.quit().catch(() => admin?.disconnect())
    await server?.stop()
  },
  makeBus: () =>
    createBus({
      outbox,
      transport: { use: "redis-streams", broker: redisStreams(options()) },
      env: false,
      relay: false,
    }),
  transaction: (fn) => outbox.transaction(fn),
  faults: {
    killConnections: async () => {
      // Every client connection but the admin's: the buses' and the relay's.
      await admin!.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    },
    restartServer: async () => {
      await server!.restart()
      await waitFor(async () => (await admin!.ping().catch(() => "")) === "PONG", 30_000, "Redis back")
      await recommendedPersistence()
    },
    pauseServer: (ms) => pauseFor(server!, ms),
  },
  extraFaults: {
    "relay killed mid-batch, then restarted": async () => {
      const killed = relay!
      killed.armed.value = true
      try {
        await waitFor(
          () => killed.armed.hung,
          60_000,
          "the relay to be mid-batch (one send done, the page's position not stored)",
        )
      } finally {
        // Killed: its fiber is interrupted mid-batch and its connections dropped; its
        // partition leases stay until they run out.
        await killed.kill()
      }
      relay = startRelay("relay-2")
    },
  },
})
