import { randomBytes } from "node:crypto"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { freePorts, retryOnPortClash } from "../../net/freePort.js"
import { assertReachable } from "../../net/tcpProbe.js"
import { ServerProcess } from "../../process/serverProcess.js"
import { ServerStartError } from "../../process/serverStartError.js"
import { createTempDir, removeTempDir } from "../../process/tempDir.js"
import { waitUntil } from "../../process/waitUntil.js"
import { controllableHandle } from "../controllableHandle.js"
import { externalHandle } from "../externalHandle.js"
import { resolveServerMode } from "../serverMode.js"
import type { NatsClusterHandle, StartNatsClusterOptions } from "../types.js"
import { natsHealthy, natsMetaLeader } from "./monitor.js"
import { natsServerBinary } from "./server.js"

/** Environment variable pointing cluster tests at an existing JetStream cluster (comma-separated URLs). */
export const NATS_CLUSTER_URL_ENV = "BUS_NATS_CLUSTER_URL"

interface NodePlan {
  readonly name: string
  readonly dir: string
  readonly clientPort: number
  readonly monitorPort: number
  readonly routePort: number
}

/**
 * Starts a JetStream cluster of `nodes` (default 3) nats-servers on loopback, routed to each other,
 * and resolves once every node follows the same elected meta leader, so that creating an R3 stream
 * works at once. With `BUS_NATS_CLUSTER_URL` set, returns a non-controllable handle for that cluster.
 *
 * A node's `restart()` resolves when it knows the meta leader again, i.e. it has rejoined. With
 * quorum lost (a majority down), restart the nodes concurrently: none can elect a leader alone.
 *
 * @throws MissingBinaryError when nats-server is not installed.
 * @throws ServerStartError (with the failing node's log tail) when the cluster does not form.
 */
export async function startNatsCluster(options: StartNatsClusterOptions = {}): Promise<NatsClusterHandle> {
  resolveServerMode()
  const external = process.env[NATS_CLUSTER_URL_ENV]
  if (external) {
    await assertReachable(external, NATS_CLUSTER_URL_ENV, 4222)
    const urls = external.split(",").map((url) => url.trim())
    const nodes = urls.map((url) => externalHandle(url, NATS_CLUSTER_URL_ENV))
    return clusterHandle(urls, nodes, false)
  }
  const count = options.nodes ?? 3
  if (!Number.isInteger(count) || count < 1)
    throw new RangeError(`nodes must be a positive integer, got ${count}`)
  const binary = natsServerBinary()
  const clusterName = `bus-test-${randomBytes(4).toString("hex")}`
  const dirs = Array.from({ length: count }, (_, index) => createTempDir(`nats-n${index + 1}`))
  try {
    const nodes = await retryOnPortClash(async () => {
      const ports = await freePorts(count * 3)
      const plans: NodePlan[] = dirs.map((dir, index) => ({
        name: `${clusterName}-n${index + 1}`,
        dir,
        clientPort: ports[index * 3] ?? 0,
        monitorPort: ports[index * 3 + 1] ?? 0,
        routePort: ports[index * 3 + 2] ?? 0,
      }))
      const servers = plans.map((plan) => nodeProcess(binary, clusterName, plan, plans))
      // All at once: no node can become ready before a majority is up to elect the meta leader.
      try {
        const started = await Promise.allSettled(servers.map((server) => server.start()))
        const failed = started.find((result) => result.status === "rejected")
        if (failed !== undefined) throw failed.reason
        await agreeOnLeader(plans)
      } catch (error) {
        await Promise.all(servers.map((server) => server.kill()))
        throw error
      }
      return plans.map((plan, index) => ({ plan, server: servers[index] as ServerProcess }))
    })
    const handles = nodes.map(({ plan, server }) =>
      controllableHandle(`nats://127.0.0.1:${plan.clientPort}`, server, plan.dir),
    )
    return clusterHandle(
      handles.map((handle) => handle.url),
      handles,
      true,
    )
  } catch (error) {
    await Promise.all(dirs.map((dir) => removeTempDir(dir)))
    throw error
  }
}

function nodeProcess(
  binary: string,
  clusterName: string,
  plan: NodePlan,
  all: readonly NodePlan[],
): ServerProcess {
  const routes = all
    .filter((other) => other !== plan)
    .map((other) => `nats://127.0.0.1:${other.routePort}`)
    .join(",")
  const logFile = join(plan.dir, "nats.log")
  writeFileSync(logFile, "", { flag: "a" })
  return new ServerProcess({
    label: `nats-server ${plan.name} on 127.0.0.1:${plan.clientPort} (${plan.dir})`,
    command: binary,
    args: [
      "-a",
      "127.0.0.1",
      "-p",
      String(plan.clientPort),
      "-m",
      String(plan.monitorPort),
      "-js",
      "-sd",
      join(plan.dir, "store"),
      "--server_name",
      plan.name,
      "--cluster_name",
      clusterName,
      "--cluster",
      `nats://127.0.0.1:${plan.routePort}`,
      "--routes",
      routes,
    ],
    logFile,
    stopSignal: "SIGTERM",
    // Healthy alone is not enough in a cluster: until the node knows the meta leader, stream and
    // consumer requests it receives fail.
    isReady: async () =>
      (await natsHealthy(plan.monitorPort)) && (await natsMetaLeader(plan.monitorPort)) !== undefined,
  })
}

/** Right after an election nodes may still disagree; a stream created then could land on a stale view. */
async function agreeOnLeader(plans: readonly NodePlan[]): Promise<void> {
  let seen: Array<string | undefined> = []
  await waitUntil(
    async () => {
      seen = await Promise.all(plans.map((plan) => natsMetaLeader(plan.monitorPort).catch(() => undefined)))
      return seen[0] !== undefined && seen.every((leader) => leader === seen[0])
    },
    {
      timeoutMs: 30_000,
      onTimeout: () =>
        new ServerStartError(
          "NATS cluster nodes did not agree on a JetStream meta leader within 30000ms",
          plans.map((plan, index) => `${plan.name}: leader ${seen[index] ?? "(none)"}`).join("\n"),
        ),
    },
  )
}

function clusterHandle(
  urls: readonly string[],
  nodes: NatsClusterHandle["nodes"],
  controllable: boolean,
): NatsClusterHandle {
  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= Promise.all(nodes.map((node) => node.stop())).then(() => undefined)
    return stopping
  }
  return {
    url: urls.join(","),
    urls,
    nodes,
    controllable,
    stop,
    [Symbol.asyncDispose]: stop,
  }
}
