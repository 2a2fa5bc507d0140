import { setTimeout as delay } from "node:timers/promises"

/** How `waitUntil` polls and how it gives up. */
export interface WaitOptions {
  readonly timeoutMs: number
  readonly intervalMs?: number
  /** Checked before every attempt; an error returned here ends the wait at once (the process died). */
  readonly abortWhen?: () => Error | undefined
  /** Builds the error for a timeout, so it can describe the state at that moment. */
  readonly onTimeout: () => Error
}

/**
 * Polls `check` until it resolves true. A check must bound its own duration (a paused server never
 * answers), otherwise one hung attempt would outlive the deadline.
 */
export async function waitUntil(check: () => Promise<boolean>, options: WaitOptions): Promise<void> {
  const deadline = Date.now() + options.timeoutMs
  for (;;) {
    const aborted = options.abortWhen?.()
    if (aborted !== undefined) throw aborted
    if (await check().catch(() => false)) return
    if (Date.now() >= deadline) throw options.onTimeout()
    await delay(options.intervalMs ?? 50)
  }
}
