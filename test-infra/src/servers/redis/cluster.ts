import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { freePorts, retryOnPortClash } from "../../net/freePort.js"
import { assertReachable } from "../../net/tcpProbe.js"
import { findExecutable } from "../../process/findExecutable.js"
import { ServerProcess } from "../../process/serverProcess.js"
import { ServerStartError } from "../../process/serverStartError.js"
import { createTempDir, removeTempDir } from "../../process/tempDir.js"
import { waitUntil } from "../../process/waitUntil.js"
import { controllableHandle } from "../controllableHandle.js"
import { externalHandle } from "../externalHandle.js"
import { resolveServerMode } from "../serverMode.js"
import type { RedisClusterHandle, RedisNodeRole, ServerHandle, StartRedisClusterOptions } from "../types.js"
import { type RedisReply, redisCommand } from "./command.js"
import { redisAnswersPing } from "./ping.js"

/** Environment variable pointing cluster tests at an existing Redis Cluster (comma-separated node URLs). */
export const REDIS_CLUSTER_URL_ENV = "BUS_REDIS_CLUSTER_URL"

const SLOTS = 16_384
const FORM_TIMEOUT_MS = 60_000

interface NodePlan {
  readonly dir: string
  readonly port: number
  readonly busPort: number
}

/**
 * Starts a Redis Cluster on loopback: `masters` (default 3) masters sharing the 16384 slots
 * evenly, each with `replicasPerMaster` (default 1) replicas, so that killing a master fails
 * over to its replica. Every node keeps an append-only file (`appendfsync no`: written before
 * the reply, so a SIGKILL of one process loses nothing that reached it) and its `nodes.conf`,
 * so a killed node restarted with `restart()` rejoins with its data and identity (a master that
 * lost its slots to its replica comes back as that replica's replica). Resolves once every node
 * reports `cluster_state:ok` and every replica is in sync with its master. With
 * `BUS_REDIS_CLUSTER_URL` set, returns a non-controllable handle for that cluster instead.
 *
 * A node timeout of `nodeTimeoutMs` (default 1 000) makes a killed master fail over within
 * about two seconds.
 *
 * @throws MissingBinaryError when redis-server is not installed.
 * @throws ServerStartError (with a failing node's log tail, or the nodes' view) when the cluster does not form.
 */
export async function startRedisCluster(options: StartRedisClusterOptions = {}): Promise<RedisClusterHandle> {
  resolveServerMode()
  const external = process.env[REDIS_CLUSTER_URL_ENV]
  if (external) {
    await assertReachable(external, REDIS_CLUSTER_URL_ENV, 6379)
    const urls = external.split(",").map((url) => url.trim())
    const ports = urls.map((url) => Number(new URL(url).port || 6379))
    return clusterHandle(
      urls,
      ports,
      urls.map((url) => externalHandle(url, REDIS_CLUSTER_URL_ENV)),
      false,
    )
  }
  const masters = options.masters ?? 3
  const replicas = options.replicasPerMaster ?? 1
  if (!Number.isInteger(masters) || masters < 1)
    throw new RangeError(`masters must be a positive integer, got ${masters}`)
  if (!Number.isInteger(replicas) || replicas < 0)
    throw new RangeError(`replicasPerMaster must be a non-negative integer, got ${replicas}`)
  const nodeTimeoutMs = options.nodeTimeoutMs ?? 1_000
  const count = masters * (1 + replicas)
  const binary = findExecutable("redis-server", "apt-get install -y redis-server")
  const dirs = Array.from({ length: count }, (_, index) => createTempDir(`redis-c${index + 1}`))
  try {
    const started = await retryOnPortClash(async () => {
      const ports = await freePorts(count * 2)
      const plans: NodePlan[] = dirs.map((dir, index) => ({
        dir,
        port: ports[index * 2] ?? 0,
        busPort: ports[index * 2 + 1] ?? 0,
      }))
      const servers = plans.map((plan) => nodeProcess(binary, plan, nodeTimeoutMs))
      try {
        const results = await Promise.allSettled(servers.map((server) => server.start()))
        const failed = results.find((result) => result.status === "rejected")
        if (failed !== undefined) throw failed.reason
        await formCluster(plans, masters)
      } catch (error) {
        await Promise.all(servers.map((server) => server.kill()))
        throw error
      }
      return plans.map((plan, index) => ({ plan, server: servers[index] as ServerProcess }))
    })
    const handles = started.map(({ plan, server }) =>
      controllableHandle(`redis://127.0.0.1:${plan.port}`, server, plan.dir),
    )
    return clusterHandle(
      handles.map((handle) => handle.url),
      started.map(({ plan }) => plan.port),
      handles,
      true,
    )
  } catch (error) {
    await Promise.all(dirs.map((dir) => removeTempDir(dir)))
    throw error
  }
}

function nodeProcess(binary: string, plan: NodePlan, nodeTimeoutMs: number): ServerProcess {
  const logFile = join(plan.dir, "redis.log")
  writeFileSync(logFile, "", { flag: "a" })
  return new ServerProcess({
    label: `redis-server (cluster node) on 127.0.0.1:${plan.port} (${plan.dir})`,
    command: binary,
    args: [
      "--port",
      String(plan.port),
      "--bind",
      "127.0.0.1",
      "--protected-mode",
      "no",
      "--cluster-enabled",
      "yes",
      // The bus port would default to port + 10000, which nobody checked was free.
      "--cluster-port",
      String(plan.busPort),
      "--cluster-config-file",
      join(plan.dir, "nodes.conf"),
      "--cluster-node-timeout",
      String(nodeTimeoutMs),
      // A replica takes over however long it was cut off: in tests the only replica of a killed
      // master must always be promoted.
      "--cluster-replica-validity-factor",
      "0",
      "--save",
      "",
      "--appendonly",
      "yes",
      "--appendfsync",
      "no",
      "--dir",
      plan.dir,
      "--daemonize",
      "no",
      "--logfile",
      "",
    ],
    logFile,
    stopSignal: "SIGTERM",
    isReady: () => redisAnswersPing(plan.port),
  })
}

/** Slots, meet, replicate, then waits until the cluster is whole and every replica in sync. */
async function formCluster(plans: readonly NodePlan[], masters: number): Promise<void> {
  const ids = await Promise.all(
    plans.map(async (plan) => String(await redisCommand(plan.port, ["CLUSTER", "MYID"]))),
  )
  for (let index = 0; index < masters; index++) {
    const first = Math.floor((index * SLOTS) / masters)
    const last = Math.floor(((index + 1) * SLOTS) / masters) - 1
    await redisCommand(plans[index]!.port, ["CLUSTER", "ADDSLOTSRANGE", String(first), String(last)])
  }
  const seed = plans[0]!
  for (const plan of plans.slice(1)) {
    await redisCommand(seed.port, ["CLUSTER", "MEET", "127.0.0.1", String(plan.port), String(plan.busPort)])
  }
  // A replica can only follow a master it knows of.
  await waitFor(
    async () =>
      (
        await Promise.all(
          plans.map(async (plan) => {
            const nodes = parseNodes(String(await redisCommand(plan.port, ["CLUSTER", "NODES"])))
            return nodes.length === plans.length && nodes.every((node) => !node.flags.includes("handshake"))
          }),
        )
      ).every(Boolean),
    "the nodes did not all meet",
  )
  for (let index = masters; index < plans.length; index++) {
    // Replicas go round the masters, so each gets `replicasPerMaster` of them.
    const master = ids[(index - masters) % masters]!
    await redisCommand(plans[index]!.port, ["CLUSTER", "REPLICATE", master])
  }
  await waitFor(() => clusterHealthy(plans.map((plan) => plan.port)), "the cluster did not become healthy")
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  await waitUntil(check, {
    timeoutMs: FORM_TIMEOUT_MS,
    intervalMs: 100,
    onTimeout: () => new ServerStartError(`Redis Cluster: ${what} within ${FORM_TIMEOUT_MS}ms`, ""),
  })
}

/** One line of CLUSTER NODES. */
interface NodeLine {
  readonly id: string
  readonly port: number
  readonly flags: readonly string[]
  readonly masterId: string
  readonly slots: ReadonlyArray<readonly [number, number]>
}

function parseNodes(text: string): NodeLine[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .map((line) => {
      const [id = "", address = "", flags = "", masterId = "", , , , , ...slots] = line.split(" ")
      const port = Number(/:(\d+)@/.exec(address)?.[1] ?? 0)
      return {
        id,
        port,
        flags: flags.split(","),
        masterId,
        slots: slots
          .filter((slot) => !slot.startsWith("["))
          .map((slot) => {
            const [from, to] = slot.split("-")
            return [Number(from), Number(to ?? from)] as const
          }),
      }
    })
}

const infoField = (info: RedisReply, field: string): string | undefined =>
  new RegExp(`^${field}:(.*)$`, "m").exec(String(info))?.[1]?.trim()

/**
 * True when every node that answers says `cluster_state:ok`, flags no answering node as failed,
 * and every answering replica has its master link up.
 */
async function clusterHealthy(ports: readonly number[]): Promise<boolean> {
  const alive = (await Promise.all(ports.map((port) => redisAnswersPing(port, 500)))).map((ok, i) =>
    ok ? ports[i]! : undefined,
  )
  const up = alive.filter((port): port is number => port !== undefined)
  if (up.length === 0) return false
  for (const port of up) {
    if (infoField(await redisCommand(port, ["CLUSTER", "INFO"]), "cluster_state") !== "ok") return false
    const nodes = parseNodes(String(await redisCommand(port, ["CLUSTER", "NODES"])))
    for (const node of nodes) {
      if (up.includes(node.port) && node.flags.some((flag) => flag === "fail" || flag === "fail?"))
        return false
    }
    const replication = await redisCommand(port, ["INFO", "replication"])
    if (infoField(replication, "role") === "slave" && infoField(replication, "master_link_status") !== "up")
      return false
  }
  return true
}

function clusterHandle(
  urls: readonly string[],
  ports: readonly number[],
  nodes: readonly ServerHandle[],
  controllable: boolean,
): RedisClusterHandle {
  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= Promise.all(nodes.map((node) => node.stop())).then(() => undefined)
    return stopping
  }
  /** The cluster as the first answering node sees it. */
  const view = async (): Promise<NodeLine[]> => {
    for (const port of ports) {
      if (!(await redisAnswersPing(port, 500))) continue
      try {
        return parseNodes(String(await redisCommand(port, ["CLUSTER", "NODES"])))
      } catch {
        // Try the next node.
      }
    }
    throw new Error("no node of the Redis Cluster answers")
  }
  const masterOfSlot = async (slot: number): Promise<number> => {
    const owner = (await view()).find(
      (node) =>
        node.flags.includes("master") &&
        !node.flags.includes("fail") &&
        node.slots.some(([from, to]) => slot >= from && slot <= to),
    )
    const index = owner === undefined ? -1 : ports.indexOf(owner.port)
    if (index < 0) throw new Error(`no live master serves slot ${slot}`)
    return index
  }
  return {
    url: urls.join(","),
    urls,
    nodes,
    controllable,
    masterOfSlot,
    masterOfKey: async (key) => {
      for (const port of ports) {
        if (!(await redisAnswersPing(port, 500))) continue
        return masterOfSlot(Number(await redisCommand(port, ["CLUSTER", "KEYSLOT", key])))
      }
      throw new Error("no node of the Redis Cluster answers")
    },
    roles: async () => {
      const seen = await view()
      return Promise.all(
        ports.map(async (port): Promise<RedisNodeRole> => {
          if (!(await redisAnswersPing(port, 500))) return "down"
          const node = seen.find((line) => line.port === port)
          return node?.flags.includes("master") ? "master" : "replica"
        }),
      )
    },
    waitHealthy: (timeoutMs = 60_000) =>
      waitUntil(() => clusterHealthy(ports), {
        timeoutMs,
        intervalMs: 100,
        onTimeout: () => new Error(`the Redis Cluster did not become healthy within ${timeoutMs}ms`),
      }),
    stop,
    [Symbol.asyncDispose]: stop,
  }
}
