import { type DeliveredEvent, memoryOutbox } from "@bus/core"
import { makeEnvelope, type SendItem, type SendOutcome, Transport } from "@bus/core/adapter"
import { type RedisClusterHandle, startRedisCluster } from "@bus/test-infra"
import { Effect, ManagedRuntime } from "effect"
import type { Cluster } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelKeys, redisStreamsTransport } from "../src/adapter.js"
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

describe("the client's connections killed: a batch that reaches the slot's replica", () => {
  /**
   * The cluster client drops a node whose connection ended and, until its slot map is
   * refreshed, sends a write to any node it still has: with every master's connection killed,
   * one of the replicas (their connections, opened lazily, were never used, so there was
   * nothing to kill). A replica's connection is READONLY, so on the replica of the slot's
   * master the batch script runs (its XADD refused with READONLY, which the script returns as
   * its result) and WAIT answers "ERR WAIT cannot be used with replica instances". That once
   * came back as a permanent failure and the relay parked a committed event (conformanceCluster,
   * "kill connections", 1 of 610 missing). Here the relay's loop runs by hand, one batch per
   * stream for 15 streams side by side (as a relay's partitions do; each batch reports its own
   * pipeline's failure, and about a third land on their master's replica): the rest is sent
   * again after every outcome, a permanent error fails the test, and what an outcome counts as
   * sent must already be in its stream (read by a client of our own).
   */
  it("is not counted, fails retryably and is sent again: every event in its stream once, in order, none parked", async () => {
    const r = new Resources()
    try {
      const runtime = ManagedRuntime.make(redisStreamsTransport(options(1)))
      r.defer(() => runtime.dispose())
      const addresses = Array.from({ length: 15 }, () => uniqueAddress())
      const streams = addresses.map((a) => channelKeys("bus", a).stream)
      const step = (a: (typeof addresses)[number], i: number): SendItem => ({
        event: Effect.runSync(makeEnvelope({ ...a, type: "test.step", data: { i } })),
        meta: { position: `mem1:abcdefab:${i + 1}`, frontier: `mem1:abcdefab:${i}` },
      })
      const expected = new Map(streams.map((stream) => [stream, [] as Array<string>]))
      const outcomes: Array<SendOutcome> = []
      /** The relay's loop over one batch: the rest sent again until all is; what is counted must be stored. */
      const relayBatch = async (items: ReadonlyArray<SendItem>) => {
        for (let done = 0, turns = 0; done < items.length; turns++) {
          if (turns === 50)
            throw new Error(`no progress: ${JSON.stringify(outcomes.map((o) => o.error?.message))}`)
          if (turns > 0) await new Promise((resolve) => setTimeout(resolve, 100))
          const outcome = await runtime.runPromise(Transport.use((t) => t.sendAll(items.slice(done))))
          outcomes.push(outcome)
          if (outcome.error !== undefined && !outcome.error.retryable) {
            throw new Error(`a permanent error, the relay would park the event: ${outcome.error.message}`)
          }
          for (const { event } of items.slice(done, done + outcome.sent)) {
            expected.get(channelKeys("bus", event).stream)!.push(event.id)
          }
          done += outcome.sent
          for (const stream of new Set(items.map(({ event }) => channelKeys("bus", event).stream))) {
            expect(await streamIds(stream), "what sendAll counts as sent is in the stream").toEqual(
              expected.get(stream),
            )
          }
        }
      }
      // Every master has a connection of the client (a stream on each), and its slot map,
      // refreshed every 5 s, lists the replicas.
      await relayBatch(addresses.map((a) => step(a, 0)))
      await new Promise((resolve) => setTimeout(resolve, 5_500))
      const writeRefusals = () => replicaWriteRefusals(cluster)
      const refusedBefore = await writeRefusals()
      const rounds = 6
      for (let round = 0; round < rounds; round++) {
        const roles = await cluster.roles()
        await Promise.all(
          roles.map((role, index) =>
            role === "master"
              ? onNode(cluster, index, (node) => node.call("CLIENT", "KILL", "TYPE", "normal"))
              : undefined,
          ),
        )
        // Long enough for the client to see the connections end, shorter than its slot refresh.
        await new Promise((resolve) => setTimeout(resolve, 200))
        await Promise.all(addresses.map((a) => relayBatch([1, 2].map((i) => step(a, round * 2 + i)))))
      }
      const refused = (await writeRefusals()) - refusedBefore
      const reported = outcomes.filter((o) => o.error?.message.includes("used with replica")).length
      console.log(
        `redis cluster, master connections killed ${rounds} times: ${outcomes.length} sendAll calls; a write refused on its slot's replica ${refused} times (replicas' INFO errorstats), ${reported} of them the outcome's error (WAIT refused there, retryable)`,
      )
      // The case happened (else the test proves nothing): batches reached their slot's replica.
      expect(refused).toBeGreaterThan(0)
      for (const stream of streams) expect(await streamIds(stream)).toEqual(expected.get(stream))
      expect([...expected.values()].flat()).toHaveLength(15 * (1 + 2 * rounds))
    } finally {
      await r.close()
    }
  }, 120_000)
})

/**
 * How many writes the replicas refused so far (their READONLY error count): a script that ran
 * on the replica of its slot's master, the others answer MOVED before running it.
 */
const replicaWriteRefusals = async (cluster: RedisClusterHandle): Promise<number> => {
  const roles = await cluster.roles()
  let refused = 0
  for (const [index, role] of roles.entries()) {
    if (role !== "replica") continue
    const info = await onNode(cluster, index, (node) => node.info("errorstats"))
    refused += Number(/errorstat_READONLY:count=(\d+)/.exec(info)?.[1] ?? 0)
  }
  return refused
}
