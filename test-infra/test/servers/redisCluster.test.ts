import { Cluster } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type RedisClusterHandle, startRedisCluster } from "../../src/index.js"
import { isSameProcessAlive, processTree } from "../../src/process/table.js"

describe("startRedisCluster", () => {
  let cluster: RedisClusterHandle
  let client: Cluster

  beforeAll(async () => {
    cluster = await startRedisCluster()
    client = new Cluster(
      cluster.urls.map((url) => {
        const { hostname, port } = new URL(url)
        return { host: hostname, port: Number(port) }
      }),
      { clusterRetryStrategy: () => 100 },
    )
    client.on("error", () => undefined)
  })
  afterAll(async () => {
    client?.disconnect()
    await cluster?.stop()
  })

  it("starts 3 masters covering every slot, each with a replica in sync", async () => {
    expect(cluster.controllable).toBe(true)
    expect(cluster.nodes).toHaveLength(6)
    expect(cluster.url).toBe(cluster.urls.join(","))
    expect(await cluster.roles()).toEqual(["master", "master", "master", "replica", "replica", "replica"])
    expect(await cluster.masterOfSlot(0)).toBe(0)
    expect(await cluster.masterOfSlot(8_000)).toBe(1)
    expect(await cluster.masterOfSlot(16_383)).toBe(2)
    const info = String(await client.cluster("INFO"))
    expect(info).toContain("cluster_state:ok")
    expect(info).toContain("cluster_slots_assigned:16384")
    await client.set("{a}x", "1")
    await client.set("{b}x", "2")
    expect(await client.get("{a}x")).toBe("1")
    expect(await client.get("{b}x")).toBe("2")
  })

  it("fails a SIGKILLed master over to its replica, keeps its keys, and the master rejoins as a replica", async () => {
    const key = "{failover}k"
    const victim = await cluster.masterOfKey(key)
    await client.set(key, "kept")
    // Replication is asynchronous: make sure the replica has the key before the kill.
    expect(await client.call("WAIT", "1", "5000")).toBeGreaterThanOrEqual(0)
    await cluster.nodes[victim]!.kill()
    await cluster.waitHealthy(30_000)
    const promoted = await cluster.masterOfKey(key)
    expect(promoted).not.toBe(victim)
    expect((await cluster.roles())[victim]).toBe("down")
    expect(await client.get(key)).toBe("kept")
    await cluster.nodes[victim]!.restart()
    await cluster.waitHealthy(30_000)
    expect((await cluster.roles())[victim]).toBe("replica")
    expect(await cluster.masterOfKey(key)).toBe(promoted)
  })

  it("stop() ends every node process", async () => {
    const before = new Set(processTree(process.pid).map((entry) => entry.pid))
    const extra = await startRedisCluster({ masters: 1, replicasPerMaster: 1 })
    const started = processTree(process.pid).filter((entry) => !before.has(entry.pid))
    expect(started.length).toBeGreaterThanOrEqual(2)
    await extra.stop()
    await extra.stop()
    expect(started.filter((entry) => isSameProcessAlive(entry.pid, entry.startTime))).toEqual([])
    await expect(extra.nodes[0]!.kill()).rejects.toThrow(/stopped/)
  })
})
