import { runConformanceSuite } from "@bus/conformance"
import { createBus, memoryOutbox } from "@bus/core"
import { outboxLayer, runRelay } from "@bus/core/adapter"
import { pauseFor, type RedisClusterHandle, startRedisCluster } from "@bus/test-infra"
import { Layer, ManagedRuntime } from "effect"
import { redisStreamsTransport } from "../src/adapter.js"
import { type RedisStreamsOptions, redisStreams } from "../src/index.js"
import { busiestStream, killClientConnections } from "./clusterSupport.js"

/**
 * The conformance suite against a Redis Cluster of 3 masters with a replica each, the
 * transport in cluster mode (`minReplicas` 1: a send counts once a replica has it). One
 * outbox for the run, as one database serves every process; the relay runs as a process of
 * its own. Faults: every client connection killed on every node; every node restarted; the
 * master of the stream being written frozen past the node timeout (its replica takes over,
 * the old master comes back as a replica); and that master SIGKILLed and later restarted.
 */
const outbox = memoryOutbox()
let cluster: RedisClusterHandle | undefined
let relay: { dispose(): Promise<void> } | undefined

const options = (): RedisStreamsOptions => ({
  cluster: { nodes: cluster!.urls },
  blockMs: 500,
  claimIdleMs: 10_000,
})

/**
 * The cluster's way back to health after a fault (the old master rejoining as a replica),
 * left running when the fault hook returns: the suite's producer keeps publishing until the
 * hook returns, and every second the hook waits adds a second of backlog for the consumers.
 * The next fault, and the teardown, wait for it.
 */
let healing: Promise<void> = Promise.resolve()

/** Index of the master serving the stream written most recently: the fault scenario's own. */
const busiestMaster = async () => cluster!.masterOfKey(await busiestStream(cluster!))

runConformanceSuite({
  name: "redis-streams (cluster)",
  setup: async () => {
    cluster = await startRedisCluster()
    const runtime = ManagedRuntime.make(
      Layer.merge(redisStreamsTransport(options()), outboxLayer(outbox.store)),
    )
    runtime.runFork(runRelay({ owner: "relay-cluster", batchSize: 100_000, leaseMs: 2_000, maxIdleMs: 100 }))
    relay = runtime
  },
  teardown: async () => {
    await healing.catch(() => undefined)
    await relay?.dispose()
    await cluster?.stop()
  },
  makeBus: () =>
    createBus({
      outbox,
      transport: { use: "redis-streams", broker: redisStreams(options()) },
      env: false,
      relay: false,
    }),
  transaction: (fn) => outbox.transaction(fn),
  // Six redis-servers on a shared machine: generous delivery bounds. The isolation property
  // checks key naming, which is the same as on one server (30 runs there).
  deliveryTimeoutMs: 30_000,
  propertyRuns: 10,
  faults: {
    killConnections: async () => {
      await healing
      await killClientConnections(cluster!)
    },
    restartServer: async () => {
      await healing
      // Every node at once: the whole cluster goes down and comes back from its AOF and nodes.conf.
      await Promise.all(cluster!.nodes.map((node) => node.restart()))
      await cluster!.waitHealthy(60_000)
    },
    pauseServer: async (ms) => {
      await healing
      // Frozen past the node timeout: its replica takes over; once resumed, it rejoins as a replica.
      await pauseFor(cluster!.nodes[await busiestMaster()]!, ms)
      healing = cluster!.waitHealthy(60_000)
    },
  },
  extraFaults: {
    "the stream's master SIGKILLed: its replica takes over; the old master restarted rejoins as a replica":
      async () => {
        await healing
        const victim = await busiestMaster()
        await cluster!.nodes[victim]!.kill()
        await cluster!.waitHealthy(60_000)
        const roles = await cluster!.roles()
        if (roles.filter((role) => role === "master").length !== 3) {
          throw new Error(`no replica took over from node ${victim}: ${roles.join(", ")}`)
        }
        // Until it is back, the new master has no replica and its sends wait (minReplicas 1).
        healing = cluster!.nodes[victim]!.restart().then(() => cluster!.waitHealthy(60_000))
      },
  },
})
