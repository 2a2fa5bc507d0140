import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, openSync } from "node:fs"
import { readLogTail } from "./logTail.js"
import type { OsUser } from "./osUser.js"
import { trackProcess, untrackProcess } from "./registry.js"
import { ServerStartError } from "./serverStartError.js"
import { type ProcessEntry, processTree } from "./table.js"
import { freezeTree, killTree, thawTree, waitForGone, waitForTreeState } from "./tree.js"
import { waitUntil } from "./waitUntil.js"

/** How to launch one server and how to tell that it is ready. */
export interface ServerLaunch {
  /** Names the server in errors, e.g. `redis-server on 127.0.0.1:6390`. */
  readonly label: string
  readonly command: string
  readonly args: readonly string[]
  readonly env?: NodeJS.ProcessEnv
  readonly runAs?: OsUser
  /** The server's stdout and stderr are appended here. */
  readonly logFile: string
  /** The signal that asks for a clean, quick shutdown. */
  readonly stopSignal: NodeJS.Signals
  /** A protocol-level check (SELECT 1, PING, healthz); must bound its own duration. */
  readonly isReady: () => Promise<boolean>
  readonly readyTimeoutMs?: number
}

const DEFAULT_READY_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 15_000
const GONE_TIMEOUT_MS = 10_000
const SIGNAL_TIMEOUT_MS = 5_000

type State = "down" | "running" | "paused"

/**
 * One server process across its restarts: spawn, readiness, signals. Lifecycle calls are queued so
 * that, say, a `kill()` issued while a `restart()` is in flight acts on the restarted process.
 */
export class ServerProcess {
  readonly #launch: ServerLaunch
  #child: ChildProcess | undefined
  #exited: Promise<void> = Promise.resolve()
  #state: State = "down"
  #queue: Promise<unknown> = Promise.resolve()

  constructor(launch: ServerLaunch) {
    this.#launch = launch
  }

  /**
   * The spawned process's id while it is up (running or paused); undefined while down. A restart
   * spawns a new process, so read it again after one.
   */
  get pid(): number | undefined {
    return this.#state === "down" ? undefined : this.#child?.pid
  }

  /** Spawns the server and resolves once `isReady` says so; a no-op while it runs. */
  start(): Promise<void> {
    return this.#serial(() => this.#start())
  }

  /** Clean shutdown (SIGKILL after a grace period), then start again with the same arguments. */
  restart(): Promise<void> {
    return this.#serial(async () => {
      await this.#shutdown()
      await this.#start()
    })
  }

  /** Clean shutdown; the process stays down. */
  shutdown(): Promise<void> {
    return this.#serial(() => this.#shutdown())
  }

  /** SIGKILL to the server and everything it forked; resolves when they are gone. */
  kill(): Promise<void> {
    return this.#serial(async () => {
      const child = this.#child
      if (child?.pid === undefined || this.#state === "down") return
      await this.#gone(child.pid, killTree(child.pid))
    })
  }

  /** SIGSTOP to the server and everything it forked: a Postgres backend serving an open connection freezes too. */
  pause(): Promise<void> {
    return this.#serial(async () => {
      const pid = this.#runningPid("pause")
      freezeTree(pid)
      await waitForTreeState(pid, true, SIGNAL_TIMEOUT_MS)
      this.#state = "paused"
    })
  }

  /** SIGCONT to the server and everything it forked. */
  resume(): Promise<void> {
    return this.#serial(async () => {
      const pid = this.#runningPid("resume")
      thawTree(pid)
      await waitForTreeState(pid, false, SIGNAL_TIMEOUT_MS)
      this.#state = "running"
    })
  }

  #serial<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(async () => {
      // Children are unref'd, so awaiting their exit alone would let Node exit mid-operation (and
      // the exit hook then kill the very server being restarted). A pending operation holds the loop.
      const keepAlive = setInterval(() => undefined, 60_000)
      try {
        return await operation()
      } finally {
        clearInterval(keepAlive)
      }
    })
    this.#queue = result.catch(() => undefined)
    return result
  }

  #runningPid(operation: string): number {
    const pid = this.#child?.pid
    if (pid === undefined || this.#state === "down") {
      throw new Error(`cannot ${operation} ${this.#launch.label}: it is not running (call restart() first)`)
    }
    return pid
  }

  async #start(): Promise<void> {
    if (this.#state !== "down") return
    const launch = this.#launch
    const child = this.#spawn()
    this.#exited = new Promise((resolve) => {
      child.once("exit", () => {
        if (child.pid !== undefined) untrackProcess(child.pid)
        if (this.#child === child) this.#state = "down"
        resolve()
      })
    })
    const pid = await spawned(child, launch)
    this.#child = child
    this.#state = "running"
    trackProcess(pid, `${launch.command} ${launch.args.join(" ")}`)
    const exitedEarly = () =>
      child.exitCode !== null || child.signalCode !== null
        ? new ServerStartError(
            `${launch.label} exited (${child.signalCode ?? `code ${child.exitCode}`}) before it was ready`,
            readLogTail(launch.logFile),
          )
        : undefined
    const timeoutMs = launch.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS
    try {
      await waitUntil(launch.isReady, {
        timeoutMs,
        abortWhen: exitedEarly,
        onTimeout: () =>
          new ServerStartError(
            `${launch.label} did not become ready within ${timeoutMs}ms`,
            readLogTail(launch.logFile),
          ),
      })
    } catch (error) {
      await this.#gone(pid, killTree(pid))
      throw error
    }
  }

  #spawn(): ChildProcess {
    const launch = this.#launch
    const log = openSync(launch.logFile, "a")
    try {
      const child = spawn(launch.command, launch.args, {
        // Own process group: a Ctrl-C meant for the test runner does not race our own orderly cleanup.
        detached: true,
        stdio: ["ignore", log, log],
        env: launch.env ?? process.env,
        uid: launch.runAs?.uid,
        gid: launch.runAs?.gid,
      })
      // A script that forgets stop() should still exit; the exit hook then kills the server.
      child.unref()
      return child
    } finally {
      closeSync(log)
    }
  }

  async #shutdown(): Promise<void> {
    const child = this.#child
    if (child?.pid === undefined || this.#state === "down") return
    const pid = child.pid
    // A stopped process would hold the shutdown signal pending for ever.
    if (this.#state === "paused") thawTree(pid)
    const members = processTree(pid)
    child.kill(this.#launch.stopSignal)
    const exited = await Promise.race([
      this.#exited.then(() => true),
      new Promise<false>((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS, false).unref()),
    ])
    await this.#gone(pid, exited ? members : [...members, ...killTree(pid)])
  }

  async #gone(pid: number, members: readonly ProcessEntry[]): Promise<void> {
    await this.#exited
    await waitForGone(members, GONE_TIMEOUT_MS)
    this.#state = "down"
    untrackProcess(pid)
  }
}

/** The pid once the kernel has the process, or the spawn error (missing binary, no permission). */
function spawned(child: ChildProcess, launch: ServerLaunch): Promise<number> {
  if (child.pid !== undefined) {
    // Later errors (a signal that could not be sent) are reported where they happen, not as a crash.
    child.on("error", () => undefined)
    return Promise.resolve(child.pid)
  }
  return new Promise((_resolve, reject) => {
    child.on("error", (error) => {
      reject(
        new ServerStartError(
          `could not spawn ${launch.label}: ${error.message}`,
          readLogTail(launch.logFile),
        ),
      )
    })
  })
}
