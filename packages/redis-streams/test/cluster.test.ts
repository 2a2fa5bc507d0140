import { type DeliveredEvent, memoryOutbox } from "@bus/core"
import { type RedisClusterHandle, startRedisCluster } from "@bus/test-infra"
import type { Cluster } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelKeys } from "../src/adapter.js"
import type { RedisStreamsOptions } from "../src/index.js"
import { clusterAdmin, onNode, replicaOf } from "./clusterSupport.js"
import { orderViolations, publish, Resources, Tally, txEvents, uniqueAddress, waitFor } from "./support.js"

/**
 * Redis replication is asynchronous: an entry a master acknowledged and then died with,
 * before its replica had it, is gone from the cluster after the failover. Made certain here:
 * the replica is frozen (SIGSTOP) while entries are written, then the master is SIGKILLed
 * and the replica resumed, so it is promoted without them.
 *
 * - `minReplicas` 1 (the default): those sends are not counted (WAIT saw no replica), the
 *   relay sends them again after the failover; readers that start afterwards get every event.
 * - `minReplicas` 0: the relay counted them as sent. The subscriber that had read them sees
 *   the stream end before its position, the stream's identity moves on, and every reader
 *   recovers: the subscriber from the outbox, the consumer group by re-sending from its floor.
 */
let cluster: RedisClusterHandle
let admin: Cluster
beforeAll(async () => {
  cluster = await startRedisCluster()
  admin = clusterAdmin(cluster)
})
afterAll(async () => {
  admin?.disconnect()
  await cluster?.stop()
})

const options = (minReplicas: number): RedisStreamsOptions => ({
  cluster: { nodes: cluster.urls, minReplicas, replicaAckTimeoutMs: 500 },
  blockMs: 500,
  claimIdleMs: 5_000,
})

/**
 * Freezes the replica of `stream`'s master and cuts its link, runs `write`, SIGKILLs the
 * master, resumes the replica: it is promoted without what `write` wrote.
 */
const loseTail = async (stream: string, write: () => Promise<void>) => {
  const master = await cluster.masterOfKey(stream)
  const replica = await replicaOf(cluster, master)
  await cluster.nodes[replica]!.pause()
  // A frozen replica would still find in its socket buffer what the master sends it meanwhile:
  // the master drops the link, so what `write` writes reaches the master alone.
  await onNode(cluster, master, (node) => node.call("CLIENT", "KILL", "TYPE", "replica"))
  try {
    await write()
  } finally {
    await cluster.nodes[master]!.kill()
    await cluster.nodes[replica]!.resume()
  }
  await cluster.waitHealthy(60_000)
  expect(await cluster.masterOfKey(stream)).toBe(replica)
  // The old master back as the new one's replica, so sends can be acknowledged again.
  await cluster.nodes[master]!.restart()
  await cluster.waitHealthy(60_000)
}

const streamIds = async (key: string) =>
  ((await admin.xrange(key, "-", "+")) as Array<[string, Array<string>]>).map(
    ([, fields]) => fields[fields.indexOf("id") + 1] ?? "",
  )

describe("a master failed over to a replica that lacks its newest entries", () => {
  it("minReplicas 1: the unacknowledged sends are not counted and are sent again; readers started after the failover get every event once", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const a = uniqueAddress()
      const stream = channelKeys("bus", a).stream
      const bus = await r.bus(outbox, options(1))
      const ids: Array<string> = []
      ids.push(...(await publish(bus, outbox, txEvents(a, "before", 20))))
      await waitFor(async () => (await streamIds(stream)).length === 20, 30_000, "the first 20 in the stream")
      let written = 0
      await loseTail(stream, async () => {
        ids.push(...(await publish(bus, outbox, txEvents(a, "during", 20))))
        // Appended on the master (not replicated, not acknowledged): what the failover loses.
        await waitFor(
          async () => {
            written = (await streamIds(stream)).length
            return written >= 40
          },
          30_000,
          "the next 20 on the master",
        )
      })
      ids.push(...(await publish(bus, outbox, txEvents(a, "after", 20))))
      const sub = r.collect(bus, a, "beginning")
      const handled = new Tally()
      r.defer(bus.consume({ ...a, group: "late" }, (e: DeliveredEvent) => handled.add(e)).close)
      await waitFor(
        () => sub.missing(ids).length === 0 && handled.missing(ids).length === 0,
        60_000,
        () =>
          `every event (subscriber missing ${sub.missing(ids).length}, group ${handled.missing(ids).length})`,
      )
      const stored = await streamIds(stream)
      console.log(
        `redis cluster failover, minReplicas 1: ${written} entries before the kill, ${stored.length} after; subscriber ${sub.distinct}/${ids.length} duplicates ${sub.duplicates.length}; group ${handled.distinct}/${ids.length} duplicates ${handled.duplicates.length}`,
      )
      expect(sub.duplicates).toEqual([])
      expect(handled.duplicates).toEqual([])
      expect(orderViolations(sub.events)).toEqual([])
      expect(orderViolations(handled.events)).toEqual([])
      expect(new Set(stored).size, "each event once in the stream").toBe(stored.length)
      expect(stored.length).toBe(60)
    } finally {
      await r.close()
    }
  }, 240_000)

  it("minReplicas 0: the lost entries are detected by the reader that had read them; subscriber and group recover from the outbox, nothing lost, no handler duplicate", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const a = uniqueAddress()
      const stream = channelKeys("bus", a).stream
      const bus = await r.bus(outbox, options(0))
      const sub = r.collect(bus, a, "beginning")
      const handled = new Tally()
      let gate: Promise<void> = Promise.resolve()
      let open = () => {}
      r.defer(
        bus.consume({ ...a, group: "g", concurrency: 1 }, async (e: DeliveredEvent) => {
          await gate
          handled.add(e)
        }).close,
      )
      const ids: Array<string> = []
      ids.push(...(await publish(bus, outbox, txEvents(a, "before", 20))))
      await waitFor(
        () => sub.missing(ids).length === 0 && handled.missing(ids).length === 0,
        30_000,
        "the first 20 at both",
      )
      const identity = await admin.get(`${stream}:identity`)
      // The group holds one entry at its handler meanwhile: it reads none of the 20 that get lost.
      gate = new Promise((resolve) => {
        open = resolve
      })
      await loseTail(stream, async () => {
        const during = await publish(bus, outbox, txEvents(a, "during", 20))
        ids.push(...during)
        await waitFor(() => sub.missing(during).length === 0, 30_000, "the subscriber to read the next 20")
      })
      open()
      ids.push(...(await publish(bus, outbox, txEvents(a, "after", 20))))
      await waitFor(
        () => sub.missing(ids).length === 0 && handled.missing(ids).length === 0,
        90_000,
        () =>
          `every event (subscriber missing ${sub.missing(ids).length}, group ${handled.missing(ids).length})`,
      )
      const rotated = await admin.get(`${stream}:identity`)
      console.log(
        `redis cluster failover, minReplicas 0: identity ${identity} → ${rotated}; subscriber ${sub.distinct}/${ids.length} duplicates ${sub.duplicates.length}; group ${handled.distinct}/${ids.length} duplicates ${handled.duplicates.length}`,
      )
      expect(rotated, "the loss was detected: the stream has a new identity").not.toBe(identity)
      expect(sub.duplicates).toEqual([])
      expect(handled.duplicates).toEqual([])
      expect(orderViolations(sub.events)).toEqual([])
      expect(orderViolations(handled.events)).toEqual([])
      expect(sub.error).toBeUndefined()
    } finally {
      await r.close()
    }
  }, 240_000)
})
