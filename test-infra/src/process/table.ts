import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"

/** One process as the kernel's process table describes it. */
export interface ProcessEntry {
  readonly pid: number
  readonly ppid: number
  /** Single-letter state from /proc: R, S, D, T (stopped), Z (zombie), ... */
  readonly state: string
  /** Clock ticks since boot at fork time; with the pid it identifies a process even after pid reuse. */
  readonly startTime: string
  /** CPU time the process used (utime + stime), in clock ticks. */
  readonly cpuTicks: number
  /** CPU time of its children that exited and were waited for (cutime + cstime), in clock ticks. */
  readonly childCpuTicks: number
}

const hasProcFs = (() => {
  try {
    readdirSync("/proc/self")
    return true
  } catch {
    return false
  }
})()

/**
 * Parses one /proc/<pid>/stat line. The command name sits in parentheses and may itself contain
 * spaces and parentheses, so the fixed fields are taken after the last ")".
 */
export function parseProcStat(stat: string): ProcessEntry | undefined {
  const close = stat.lastIndexOf(")")
  if (close < 0) return undefined
  const pid = Number(stat.slice(0, stat.indexOf(" ")))
  const fields = stat
    .slice(close + 2)
    .trim()
    .split(/\s+/)
  // fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17, starttime field 22.
  const state = fields[0]
  const ppid = Number(fields[1])
  const startTime = fields[19]
  if (state === undefined || startTime === undefined || !Number.isInteger(pid) || !Number.isInteger(ppid))
    return undefined
  const num = (i: number) => Number(fields[i] ?? 0)
  return { pid, ppid, state, startTime, cpuTicks: num(11) + num(12), childCpuTicks: num(13) + num(14) }
}

/** Reads /proc/<pid>/stat; undefined when the process is gone (or there is no /proc). */
export function readProcessEntry(pid: number): ProcessEntry | undefined {
  if (!hasProcFs) return undefined
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return undefined
  }
}

/** Every process of the machine, zombies included; empty without /proc. */
export function readProcessTable(): ProcessEntry[] {
  if (!hasProcFs) return []
  const table: ProcessEntry[] = []
  for (const name of readdirSync("/proc")) {
    const pid = Number(name)
    if (!Number.isInteger(pid)) continue
    // Gone between the listing and the read: simply not in the table.
    const entry = readProcessEntry(pid)
    if (entry !== undefined) table.push(entry)
  }
  return table
}

/** `root` and its descendants in `table`, parents before children; empty when `root` is not in it. */
function descendants(root: number, table: readonly ProcessEntry[]): ProcessEntry[] {
  const children = new Map<number, ProcessEntry[]>()
  let rootEntry: ProcessEntry | undefined
  for (const entry of table) {
    if (entry.pid === root) rootEntry = entry
    const siblings = children.get(entry.ppid)
    if (siblings === undefined) children.set(entry.ppid, [entry])
    else siblings.push(entry)
  }
  if (rootEntry === undefined) return []
  const tree = [rootEntry]
  for (let index = 0; index < tree.length; index++) {
    tree.push(...(children.get((tree[index] as ProcessEntry).pid) ?? []))
  }
  return tree
}

/**
 * The process and all its live descendants, parents before children. A tree and not a process
 * group, because Postgres puts every child it forks into a session of its own. Zombies count as
 * gone: they hold no port, file or memory, and an orphaned one only waits for init to reap it.
 */
export function processTree(rootPid: number): ProcessEntry[] {
  if (!hasProcFs) return rootOnly(rootPid)
  return descendants(
    rootPid,
    readProcessTable().filter((entry) => entry.state !== "Z"),
  )
}

let clockTicks: number | undefined
/** The kernel's clock ticks per second (`getconf CLK_TCK`, 100 on almost every Linux). */
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

/**
 * CPU ms used so far by `root` and its descendants, counting children that already exited
 * (Postgres forks a backend per connection, and a closed connection's backend is gone by the
 * time a benchmark block ends). Undefined when `root` is not in `table`. Pass one table to
 * measure several trees at the same instant.
 */
export function processTreeCpuMs(
  root: number,
  table: readonly ProcessEntry[] = readProcessTable(),
): number | undefined {
  const tree = descendants(root, table)
  if (tree.length === 0) return undefined
  const ticks = tree.reduce((sum, entry) => sum + entry.cpuTicks + entry.childCpuTicks, 0)
  return (ticks * 1000) / ticksPerSecond()
}

/** Without /proc only the root itself can be found, by a signal-0 probe that also counts zombies. */
function rootOnly(pid: number): ProcessEntry[] {
  try {
    process.kill(pid, 0)
    return [{ pid, ppid: 0, state: "?", startTime: "", cpuTicks: 0, childCpuTicks: 0 }]
  } catch {
    return []
  }
}

/** Whether the process recorded as (pid, startTime) still runs, and is not a new process reusing the pid. */
export function isSameProcessAlive(pid: number, startTime: string | undefined): boolean {
  if (hasProcFs) {
    const entry = readProcessEntry(pid)
    if (entry === undefined || entry.state === "Z") return false
    return startTime === undefined || startTime === "" || entry.startTime === startTime
  }
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
