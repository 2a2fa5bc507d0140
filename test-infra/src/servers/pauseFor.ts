import { setTimeout as delay } from "node:timers/promises"
import type { ServerHandle } from "./types.js"

/**
 * Stalls a server for `ms` (SIGSTOP, then SIGCONT), resuming it even when the wait is
 * interrupted: the "server paused" fault of the conformance suite. The wait is the fault's
 * duration, not a wait for a condition.
 */
export const pauseFor = async (server: ServerHandle, ms: number): Promise<void> => {
  await server.pause()
  try {
    await delay(ms)
  } finally {
    await server.resume()
  }
}
