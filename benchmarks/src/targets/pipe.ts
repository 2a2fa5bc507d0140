import type { TransportId } from "../harness/types.js"

/**
 * A delivery path under test: a producer that commits events on a channel and receivers
 * that get them. The SDK paths (one per transport) and the raw-client baselines
 * implement the same interface, so every scenario drives them identically.
 *
 * Events carry `{ s, t, p }`: a sequence number, the intended send time on this
 * process's `performance.now()` clock (producer and receivers share the clock), and
 * padding up to the payload size.
 */

export type OnReceive = (seq: number, intendedAt: number, subscriber: number, at: number) => void

export interface OpenRequest {
  /** A channel no other session uses. */
  readonly channel: string
  readonly subscribers: number
  /** Approximate size of the encoded event data. */
  readonly payloadBytes: number
  readonly onReceive: OnReceive
  /** How long all receivers may take to become live. */
  readonly readyTimeoutMs: number
}

export interface Session {
  /** Commits `seqs` as one transaction (one event each); resolves when the commit returned. */
  send(seqs: readonly number[], intendedAt: number): Promise<void>
  /** Stops the receivers. */
  close(): Promise<void>
  /** Errors of the receivers (a subscription that failed). */
  readonly errors: readonly string[]
}

export interface Pipe {
  /** `postgres-notify`, `raw-pg`, … */
  readonly id: string
  readonly label: string
  readonly transport: TransportId
  readonly kind: "sdk" | "raw"
  /** Receivers one session can have (raw baselines: 1). */
  readonly maxSubscribers: number
  /** Largest payload the path can carry, when it has a hard limit (raw NOTIFY: 8000 bytes). */
  readonly maxPayloadBytes?: number
  open(request: OpenRequest): Promise<Session>
  close(): Promise<void>
}

export const tenant = "bench"

/** Event data of `payloadBytes` (± a few bytes: the numbers vary in length). */
export const eventData = (seq: number, intendedAt: number, pad: string) => ({ s: seq, t: intendedAt, p: pad })

/** The padding string for a payload size; the fixed part `{"s":…,"t":…,"p":""}` is ~40 bytes. */
export const padFor = (payloadBytes: number): string => "x".repeat(Math.max(0, payloadBytes - 40))

/** Primer events use negative sequence numbers; they make sure every receiver is live before a block. */
export const PRIMER = -1

/**
 * Wraps `onReceive` so primer events mark receivers live, and returns a function that
 * sends primers until every receiver has seen one.
 */
export const readiness = (subscribers: number, onReceive: OnReceive) => {
  const live = new Uint8Array(subscribers)
  let count = 0
  const wrapped: OnReceive = (seq, intendedAt, subscriber, at) => {
    if (seq < 0) {
      if (live[subscriber] === 0) {
        live[subscriber] = 1
        count++
      }
      return
    }
    onReceive(seq, intendedAt, subscriber, at)
  }
  const waitLive = async (sendPrimer: () => Promise<void>, timeoutMs: number): Promise<void> => {
    const deadline = performance.now() + timeoutMs
    let interval = 50
    while (count < subscribers) {
      if (performance.now() > deadline) {
        throw new Error(`only ${count}/${subscribers} receivers were live after ${timeoutMs} ms`)
      }
      await sendPrimer()
      const until = Math.min(deadline, performance.now() + interval)
      while (count < subscribers && performance.now() < until) await sleep(10)
      interval = Math.min(1000, interval * 2)
    }
  }
  return { onReceive: wrapped, waitLive, liveCount: () => count }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
