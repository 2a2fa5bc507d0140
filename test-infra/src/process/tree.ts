import { setTimeout as delay } from "node:timers/promises"
import { isSameProcessAlive, type ProcessEntry, processTree, readProcessEntry } from "./table.js"

const sleeper = new Int32Array(new SharedArrayBuffer(4))

/** Blocks the thread; only for exit paths, where the event loop no longer runs. */
function sleepSync(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms)
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name)
  } catch (error) {
    // Gone already is fine: that is what the caller is after.
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error
  }
}

/**
 * SIGSTOPs the process and all its descendants and returns them. Parents are stopped before their
 * children are listed, and the listing repeats until nothing new appears, so no process forked in
 * the meantime escapes (a Postgres backend for a connection that was just accepted).
 */
export function freezeTree(rootPid: number): ProcessEntry[] {
  const frozen = new Map<number, ProcessEntry>()
  for (let round = 0; round < 20; round++) {
    const fresh = processTree(rootPid).filter((entry) => !frozen.has(entry.pid))
    if (fresh.length === 0) break
    for (const entry of fresh) {
      signal(entry.pid, "SIGSTOP")
      frozen.set(entry.pid, entry)
    }
    // A fork already under way completes before the stop takes effect; wait for the stop to land.
    const deadline = Date.now() + 200
    while (Date.now() < deadline && fresh.some((entry) => isRunning(entry))) sleepSync(1)
  }
  return [...frozen.values()]
}

function isRunning(entry: ProcessEntry): boolean {
  const now = readProcessEntry(entry.pid)
  return now !== undefined && now.startTime === entry.startTime && now.state !== "T" && now.state !== "Z"
}

/** SIGCONTs the process and all its descendants. */
export function thawTree(rootPid: number): void {
  for (const entry of processTree(rootPid)) signal(entry.pid, "SIGCONT")
}

/** Freezes the tree, then SIGKILLs every member at once; returns who was killed, for `waitForGone`. */
export function killTree(rootPid: number): ProcessEntry[] {
  const members = freezeTree(rootPid)
  for (const entry of members) signal(entry.pid, "SIGKILL")
  return members
}

/** `killTree`, then blocks until the members are gone (exit paths only). */
export function killTreeSync(rootPid: number, timeoutMs: number): void {
  const members = killTree(rootPid)
  const deadline = Date.now() + timeoutMs
  while (members.some(alive) && Date.now() < deadline) sleepSync(5)
}

function alive(entry: ProcessEntry): boolean {
  return isSameProcessAlive(entry.pid, entry.startTime)
}

/** Resolves once none of `members` runs any more; rejects after `timeoutMs`. */
export async function waitForGone(members: readonly ProcessEntry[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (members.some(alive)) {
    if (Date.now() > deadline) {
      const left = members.filter(alive).map((entry) => entry.pid)
      throw new Error(`processes ${left.join(", ")} still run ${timeoutMs}ms after they were told to exit`)
    }
    await delay(10)
  }
}

/** Resolves once every member of the tree is stopped (state T), or with `stopped` false, none is. */
export async function waitForTreeState(rootPid: number, stopped: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  const settled = () => processTree(rootPid).every((entry) => (entry.state === "T") === stopped)
  while (!settled()) {
    if (Date.now() > deadline) {
      throw new Error(
        `process ${rootPid} and its children did not ${stopped ? "stop" : "continue"} in ${timeoutMs}ms`,
      )
    }
    await delay(5)
  }
}
