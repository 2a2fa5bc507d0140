import { processTreeCpuMs, readProcessTable } from "@bus/test-infra"

/**
 * CPU accounting: `process.cpuUsage()` for this process, and `/proc/<pid>/stat` for a
 * server's whole process tree (Postgres forks a backend per connection), read through
 * test-infra's process table. Linux only; elsewhere the server figures are missing, never
 * invented.
 */

/** CPU ms used so far by `root`'s process tree (see test-infra's `processTreeCpuMs`). */
export const treeCpuMs = processTreeCpuMs

export interface CpuSample {
  readonly at: number
  readonly processUs: number
  readonly servers: Readonly<Record<string, number | undefined>>
}

export interface CpuDelta {
  readonly wallMs: number
  /** This process (user + system), ms. */
  readonly processMs: number
  /** Per server process tree, ms; undefined when it could not be read. */
  readonly serversMs: Readonly<Record<string, number | undefined>>
}

/** Samples this process and the given server trees. */
export class CpuMeter {
  /** `serverPids` is read at every sample: a restarted server has a new pid. */
  constructor(readonly serverPids: () => Readonly<Record<string, number>>) {}

  sample(): CpuSample {
    const usage = process.cpuUsage()
    const pids = this.serverPids()
    // One table for every tree, so the servers are read at the same instant.
    const table = Object.keys(pids).length > 0 ? readProcessTable() : []
    const servers: Record<string, number | undefined> = {}
    for (const [name, pid] of Object.entries(pids)) servers[name] = processTreeCpuMs(pid, table)
    return { at: performance.now(), processUs: usage.user + usage.system, servers }
  }

  static delta(from: CpuSample, to: CpuSample): CpuDelta {
    const serversMs: Record<string, number | undefined> = {}
    for (const [name, end] of Object.entries(to.servers)) {
      const start = from.servers[name]
      serversMs[name] = end !== undefined && start !== undefined ? end - start : undefined
    }
    return { wallMs: to.at - from.at, processMs: (to.processUs - from.processUs) / 1000, serversMs }
  }
}
