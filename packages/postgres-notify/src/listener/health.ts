/**
 * What the listener reports about itself, readable at any time from the store.
 *
 * @module
 */

/** State of LISTEN/NOTIFY delivery for one store. */
export interface NotifyHealth {
  /**
   * `healthy`: the self-probe's NOTIFY came back. `degraded`: it did not (pgbouncer in
   * transaction mode, a replica, LISTEN refused), or the LISTEN connection missed a
   * heartbeat or is being reconnected, or fallback polls are failing (timing out); wake-ups
   * come from the faster fallback poll meanwhile, and `reason` says which. `starting`: no
   * probe has finished yet. `disabled`: the store was built with `listen: false` (and
   * polls pass).
   */
  readonly notify: "starting" | "healthy" | "degraded" | "disabled"
  /** Why the state is not `healthy`, in words an operator can act on. */
  readonly reason: string | undefined
  /** The LISTEN connection is currently up. */
  readonly connected: boolean
  /** Successful connections so far (the first one included). */
  readonly connects: number
  /** Connections lost so far. */
  readonly disconnects: number
  /** Failed connection attempts so far. */
  readonly failedAttempts: number
  /** Notifications received on watched channels. */
  readonly notifications: number
  /** Notifications on our channels whose payload was not ours (they woke every address of that channel). */
  readonly malformedNotifications: number
  /** Channels currently LISTENed (watched addresses, plus the relay channel when watched). */
  readonly channels: number
  /** Last connection or probe error. */
  readonly lastError: string | undefined
  /** Fallback polls run so far, and the interval now in force (0: off). */
  readonly polls: number
  readonly pollIntervalMs: number
  /** Fallback polls failed in a row now (0 once one passes), and polls abandoned at their deadline so far. */
  readonly pollFailures: number
  readonly pollTimeouts: number
  /** Heartbeats of the LISTEN connection that came back, and connections declared dead for a missed one. */
  readonly heartbeats: number
  readonly heartbeatFailures: number
  /** Round trip of the last heartbeat (ms). */
  readonly lastHeartbeatMs: number | undefined
}
