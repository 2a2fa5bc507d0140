import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, readlinkSync } from "node:fs"

/**
 * CPU accounting: `process.cpuUsage()` for this process, and `/proc/<pid>/stat` for a
 * server's whole process tree (Postgres forks a backend per connection). Linux only;
 * elsewhere the server figures are missing, never invented.
 */

let clockTicks: number | undefined
const ticksPerSecond = (): number => {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  return clockTicks
}

interface StatLine {
  readonly pid: number
  readonly ppid: number
  /** utime + stime, in clock ticks. */
  readonly own: number
  /** cutime + cstime: children that exited and were waited for. */
  readonly children: number
}

/** Parses one /proc/<pid>/stat line (the command may contain spaces and parentheses). */
export const parseStat = (text: string): StatLine | undefined => {
  const close = text.lastIndexOf(")")
  if (close < 0) return undefined
  const pid = Number(text.slice(0, text.indexOf(" ")))
  const fields = text
    .slice(close + 2)
    .trim()
    .split(/\s+/)
  // fields[0] is field 3 (state); utime is field 14 → index 11.
  const num = (i: number) => Number(fields[i] ?? 0)
  return { pid, ppid: num(1), own: num(11) + num(12), children: num(13) + num(14) }
}

const readAllStats = (): StatLine[] => {
  const out: StatLine[] = []
  let names: string[]
  try {
    names = readdirSync("/proc")
  } catch {
    return out
  }
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue
    try {
      const line = parseStat(readFileSync(`/proc/${name}/stat`, "utf8"))
      if (line !== undefined) out.push(line)
    } catch {
      // gone meanwhile
    }
  }
  return out
}

/** CPU ms used so far by `root` and its live descendants, plus descendants that already exited. */
export const treeCpuMs = (root: number, stats: StatLine[] = readAllStats()): number | undefined => {
  const byParent = new Map<number, StatLine[]>()
  let rootLine: StatLine | undefined
  for (const s of stats) {
    if (s.pid === root) rootLine = s
    const list = byParent.get(s.ppid) ?? []
    list.push(s)
    byParent.set(s.ppid, list)
  }
  if (rootLine === undefined) return undefined
  let ticks = 0
  const stack = [rootLine]
  while (stack.length > 0) {
    const s = stack.pop() as StatLine
    ticks += s.own + s.children
    for (const child of byParent.get(s.pid) ?? []) stack.push(child)
  }
  return (ticks * 1000) / ticksPerSecond()
}

/** The pid of the process listening on TCP `port` on this machine, if it can be found. */
export const pidListeningOn = (port: number): number | undefined => {
  const inodes = new Set<string>()
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string
    try {
      text = readFileSync(file, "utf8")
    } catch {
      continue
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/)
      if (cols.length < 10) continue
      const local = cols[1] ?? ""
      const state = cols[3]
      const localPort = Number.parseInt(local.split(":")[1] ?? "", 16)
      if (state === "0A" && localPort === port) inodes.add(cols[9] ?? "")
    }
  }
  if (inodes.size === 0) return undefined
  const candidates: number[] = []
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue
    let fds: string[]
    try {
      fds = readdirSync(`/proc/${name}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      try {
        const link = readlinkSync(`/proc/${name}/fd/${fd}`)
        const match = /^socket:\[(\d+)\]$/.exec(link)
        if (match !== null && inodes.has(match[1] as string)) {
          candidates.push(Number(name))
          break
        }
      } catch {
        // fd closed meanwhile
      }
    }
  }
  // Children may inherit the listening socket; the tree root is the one whose parent is not a candidate.
  const stats = readAllStats()
  const parentOf = new Map(stats.map((s) => [s.pid, s.ppid]))
  return candidates.find((pid) => !candidates.includes(parentOf.get(pid) ?? -1)) ?? candidates[0]
}

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
  constructor(readonly serverPids: Readonly<Record<string, number>>) {}

  sample(): CpuSample {
    const usage = process.cpuUsage()
    const stats = Object.keys(this.serverPids).length > 0 ? readAllStats() : []
    const servers: Record<string, number | undefined> = {}
    for (const [name, pid] of Object.entries(this.serverPids)) servers[name] = treeCpuMs(pid, stats)
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
