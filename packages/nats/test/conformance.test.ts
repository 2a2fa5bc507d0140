import { runConformanceSuite } from "@bus/conformance"
import { createBus, memoryOutbox } from "@bus/core"
import { pauseFor, type ServerHandle, startNats } from "@bus/test-infra"
import type { NatsTransportOptions } from "../src/index.js"
import { nats } from "../src/index.js"
import { KillableRelay, TcpProxy } from "./support.js"

// One outbox for the run, as one database serves every process; each bus the suite makes
// is another process over it. Every connection goes through a TCP proxy so "kill
// connections" can drop them all while the server stays up.
const outbox = memoryOutbox()
let server: ServerHandle | undefined
let proxy: TcpProxy | undefined
let relay: KillableRelay | undefined

const transportOptions = (): NatsTransportOptions => ({
  servers: proxy!.url,
  // In-progress acks keep held deliveries alive, so a short ack wait only shortens how
  // long a delivery lost with a dropped connection blocks its group.
  ackWaitMs: 5_000,
})

runConformanceSuite({
  name: "nats",
  setup: async () => {
    server = await startNats()
    proxy = await TcpProxy.start(server.url)
    // One relay for the whole outbox (buses run with relay: false), as a deployment with a
    // dedicated relay process would; it is also the relay the "relay killed" fault kills.
    relay = new KillableRelay(outbox, transportOptions(), { leaseMs: 3_000, maxIdleMs: 200 })
    await relay.start()
  },
  teardown: async () => {
    await relay?.stop()
    await proxy?.close()
    await server?.stop()
  },
  makeBus: () =>
    createBus({
      outbox,
      transport: { use: "nats", broker: nats(transportOptions()) },
      env: false,
      relay: false,
    }),
  transaction: (fn) => outbox.transaction(fn),
  faults: {
    killConnections: async () => {
      await proxy!.dropAll()
    },
    restartServer: () => server!.restart(),
    pauseServer: (ms) => pauseFor(server!, ms),
  },
  extraFaults: {
    "relay killed mid-batch": () => relay!.killMidBatch(3),
  },
})
