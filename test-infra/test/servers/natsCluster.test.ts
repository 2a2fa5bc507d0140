import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import { type NatsClusterHandle, startNatsCluster } from "../../src/index.js"

describe("startNatsCluster", () => {
  let cluster: NatsClusterHandle
  let nc: NatsConnection

  beforeAll(async () => {
    cluster = await startNatsCluster()
    nc = await connect({
      servers: [...cluster.urls],
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
      timeout: 2_000,
    })
  })
  afterAll(async () => {
    await nc?.close()
    await cluster?.stop()
  })

  it("starts three routed JetStream nodes with an elected meta leader", async () => {
    expect(cluster.controllable).toBe(true)
    expect(cluster.nodes).toHaveLength(3)
    expect(cluster.url).toBe(cluster.urls.join(","))
    const jsm = await jetstreamManager(nc)
    const info = await jsm.getAccountInfo()
    expect(info.api.errors).toBe(0)
  })

  /** Index into `cluster.nodes` of the server named `name` (servers are named <cluster>-n<1-based index>). */
  function nodeNamed(name: string) {
    const node = cluster.nodes[Number(/-n(\d+)$/.exec(name)?.[1] ?? "0") - 1]
    if (node === undefined) throw new Error(`no node named ${name}`)
    return node
  }

  /** Retries `attempt` until it stops throwing: failover takes a few seconds and nobody should guess how many. */
  function eventually<T>(attempt: () => Promise<T>): Promise<T> {
    return vi.waitFor(attempt, { timeout: 30_000, interval: 200 })
  }

  async function streamInfo() {
    return (await jetstreamManager(nc)).streams.info("ORDERS_R3")
  }

  /** Resolves once `name` is a replica of the stream again and has caught up. */
  async function rejoined(name: string): Promise<void> {
    await vi.waitFor(
      async () => {
        const cluster = (await streamInfo()).cluster
        const current =
          cluster?.leader === name || cluster?.replicas?.some((r) => r.name === name && r.current)
        if (!current) throw new Error(`${name} has not caught up yet`)
      },
      { timeout: 30_000, interval: 100 },
    )
  }

  it("keeps an R3 stream available (publish + read) with a follower SIGKILLed; the node rejoins", async () => {
    const jsm = await jetstreamManager(nc)
    const stream = await jsm.streams.add({
      name: "ORDERS_R3",
      subjects: ["r3.>"],
      num_replicas: 3,
      storage: StorageType.File,
    })
    const js = jetstream(nc, { timeout: 2_000 })
    await js.publish("r3.created", "before")
    const follower = stream.cluster?.replicas?.[0]?.name
    if (follower === undefined) throw new Error("an R3 stream has followers")
    const node = nodeNamed(follower)

    await node.kill()
    // Only a client that happened to be connected to the killed node has to reconnect first.
    await eventually(() => js.publish("r3.created", "follower down"))
    // JetStream API requests can time out while the cluster re-routes; retry until one answers.
    const read = await eventually(async () =>
      (await jetstreamManager(nc)).streams.getMessage("ORDERS_R3", { last_by_subj: "r3.created" }),
    )
    expect(read?.string()).toBe("follower down")

    await node.restart()
    await rejoined(follower)
    // A client that knows only the restarted node reaches the stream through it.
    const direct = await connect({ servers: node.url })
    try {
      const info = await eventually(async () => (await jetstreamManager(direct)).streams.info("ORDERS_R3"))
      expect(info.state.last_seq).toBeGreaterThanOrEqual(2)
    } finally {
      await direct.close()
    }
  })

  it("elects a new stream leader when the leader is SIGKILLed, loses nothing, and the old leader rejoins", async () => {
    const before = await eventually(streamInfo)
    const leader = before.cluster?.leader
    if (leader === undefined) throw new Error("the stream has a leader")
    const node = nodeNamed(leader)

    await node.kill()
    const js = jetstream(nc, { timeout: 2_000 })
    // Until a follower notices the silence and wins the election (seconds), publishes time out.
    await eventually(() => js.publish("r3.created", "leader down"))
    const after = await eventually(streamInfo)
    expect(after.cluster?.leader).not.toBe(leader)
    expect(after.state.last_seq).toBeGreaterThan(before.state.last_seq)
    const first = await eventually(async () =>
      (await jetstreamManager(nc)).streams.getMessage("ORDERS_R3", { seq: 1 }),
    )
    expect(first?.string()).toBe("before")

    await node.restart()
    await rejoined(leader)
  })
})
