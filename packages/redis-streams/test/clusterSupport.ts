import type { RedisClusterHandle } from "@bus/test-infra"
import { Cluster, Redis } from "ioredis"

/** An admin client of the whole cluster (commands routed by key slot), errors swallowed. */
export const clusterAdmin = (cluster: RedisClusterHandle): Cluster => {
  const admin = new Cluster(
    cluster.urls.map((url) => {
      const { hostname, port } = new URL(url)
      return { host: hostname, port: Number(port) }
    }),
    { clusterRetryStrategy: () => 100, redisOptions: { maxRetriesPerRequest: null } },
  )
  admin.on("error", () => {})
  return admin
}

/** Runs `work` with a plain client of one node (index into `cluster.nodes`), closed afterwards. */
export const onNode = async <A>(
  cluster: RedisClusterHandle,
  index: number,
  work: (node: Redis) => Promise<A>,
): Promise<A> => {
  const node = new Redis(cluster.urls[index]!, { maxRetriesPerRequest: 1, connectTimeout: 2_000 })
  node.on("error", () => {})
  try {
    return await work(node)
  } finally {
    node.disconnect()
  }
}

/** Every client connection but replication links, on every node that answers (CLIENT KILL TYPE normal). */
export const killClientConnections = async (cluster: RedisClusterHandle): Promise<void> => {
  const roles = await cluster.roles()
  await Promise.all(
    roles.map((role, index) =>
      role === "down"
        ? undefined
        : onNode(cluster, index, (node) => node.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")),
    ),
  )
}

/**
 * The stream written most recently under `prefix` (by its newest entry id), found by scanning
 * every master: a key lives on one master only, so a SCAN of one node sees a third of them.
 */
export const busiestStream = async (cluster: RedisClusterHandle, prefix = "bus"): Promise<string> => {
  const roles = await cluster.roles()
  let best: { key: string; id: string } | undefined
  for (const [index, role] of roles.entries()) {
    if (role !== "master") continue
    await onNode(cluster, index, async (node) => {
      let cursor = "0"
      do {
        const [next, keys] = (await node.call(
          "SCAN",
          cursor,
          "MATCH",
          `${prefix}:{*}:*`,
          "TYPE",
          "stream",
          "COUNT",
          1000,
        )) as [string, Array<string>]
        cursor = next
        for (const key of keys) {
          const last = (await node.xrevrange(key, "+", "-", "COUNT", 1))[0]?.[0]
          if (last !== undefined && (best === undefined || newer(last, best.id))) best = { key, id: last }
        }
      } while (cursor !== "0")
    })
  }
  if (best === undefined) throw new Error(`no stream under ${prefix} on any master`)
  return best.key
}

const newer = (a: string, b: string): boolean => {
  const [am = 0n, as = 0n] = a.split("-").map(BigInt)
  const [bm = 0n, bs = 0n] = b.split("-").map(BigInt)
  return am > bm || (am === bm && as > bs)
}

/** The seed URLs the transport is given: every node, so it finds the cluster whichever is down. */
export const seeds = (cluster: RedisClusterHandle): ReadonlyArray<string> => cluster.urls

/** Index into `cluster.nodes` of a replica of the master at `master`. */
export const replicaOf = async (cluster: RedisClusterHandle, master: number): Promise<number> => {
  const lines = await onNode(cluster, master, async (node) => {
    const id = String(await node.call("CLUSTER", "MYID"))
    return (await node.call("CLUSTER", "REPLICAS", id)) as Array<string>
  })
  for (const line of lines) {
    const port = /:(\d+)@/.exec(line)?.[1]
    const index = cluster.urls.findIndex((url) => new URL(url).port === port)
    if (index >= 0) return index
  }
  throw new Error(`node ${master} has no replica`)
}
