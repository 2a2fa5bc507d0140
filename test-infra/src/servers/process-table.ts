import { readdirSync, readFileSync } from "node:fs"

/** One process as the kernel's process table describes it. */
export interface ProcessEntry {
  readonly pid: number
  readonly ppid: number
  /** Single-letter state from /proc: R, S, D, T (stopped), Z (zombie), ... */
  readonly state: string
  /** Clock ticks since boot at fork time; with the pid it identifies a process even after pid reuse. */
  readonly startTime: string
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
 * Reads /proc/<pid>/stat. The command name sits in parentheses and may itself contain spaces and
 * parentheses, so the fixed fields are taken after the last ")".
 */
export function readProcessEntry(pid: number): ProcessEntry | undefined {
  if (!hasProcFs) return undefined
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  } catch {
    return undefined
  }
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  // After the command: state(3) ppid(4) ... starttime(22); fields[0] is field 3.
  const state = fields[0]
  const ppid = Number(fields[1])
  const startTime = fields[19]
  if (state === undefined || startTime === undefined || !Number.isInteger(ppid)) return undefined
  return { pid, ppid, state, startTime }
}

/**
 * The process and all its live descendants, parents before children. A tree and not a process
 * group, because Postgres puts every child it forks into a session of its own. Zombies count as
 * gone: they hold no port, file or memory, and an orphaned one only waits for init to reap it.
 */
export function processTree(rootPid: number): ProcessEntry[] {
  if (!hasProcFs) return rootOnly(rootPid)
  const children = new Map<number, ProcessEntry[]>()
  let root: ProcessEntry | undefined
  for (const name of readdirSync("/proc")) {
    const pid = Number(name)
    if (!Number.isInteger(pid)) continue
    const entry = readProcessEntry(pid)
    if (entry === undefined || entry.state === "Z") continue
    if (pid === rootPid) root = entry
    const siblings = children.get(entry.ppid)
    if (siblings === undefined) children.set(entry.ppid, [entry])
    else siblings.push(entry)
  }
  if (root === undefined) return []
  const tree = [root]
  for (let index = 0; index < tree.length; index++) {
    tree.push(...(children.get((tree[index] as ProcessEntry).pid) ?? []))
  }
  return tree
}

/** Without /proc only the root itself can be found, by a signal-0 probe that also counts zombies. */
function rootOnly(pid: number): ProcessEntry[] {
  try {
    process.kill(pid, 0)
    return [{ pid, ppid: 0, state: "?", startTime: "" }]
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
