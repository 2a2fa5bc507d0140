import { LatencyHistogram } from "./histogram.js"

/**
 * Open-loop load: the send times are computed before the run (a fixed rate), every send
 * is issued at its intended time whether or not earlier sends have finished, and every
 * latency is measured from the intended time. A slow system therefore shows up as
 * latency, never as a lower offered rate (no coordinated omission). When the generator
 * itself falls behind (CPU starvation, timer coarseness), the lag is recorded.
 */

/** Offsets in ms from the start of the block of every send of a fixed-rate schedule. */
export const scheduleOffsets = (ratePerSec: number, durationMs: number): Float64Array => {
  if (!(ratePerSec > 0) || !(durationMs > 0)) return new Float64Array(0)
  const count = Math.floor((durationMs * ratePerSec) / 1000)
  const interval = 1000 / ratePerSec
  const offsets = new Float64Array(count)
  for (let i = 0; i < count; i++) offsets[i] = i * interval
  return offsets
}

/** Index of the first send at or after `warmupMs`: sends before it are warm-up and not measured. */
export const firstMeasuredIndex = (offsets: Float64Array, warmupMs: number): number => {
  let lo = 0
  let hi = offsets.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((offsets[mid] as number) < warmupMs) lo = mid + 1
    else hi = mid
  }
  return lo
}

export interface OpenLoopOptions {
  readonly ratePerSec: number
  readonly durationMs: number
  readonly warmupMs: number
  /** Sends still unfinished beyond this are not issued (counted as skipped; the block is saturated). */
  readonly maxInFlight: number
  /** Issues send `seq`; `intendedAt` is its scheduled time on the `performance.now()` clock. */
  readonly send: (seq: number, intendedAt: number) => Promise<void>
  /** Called when a send resolved (committed). */
  readonly onCommitted?: (seq: number, intendedAt: number, at: number) => void
  /** Called every ~100 ms while the schedule runs. */
  readonly onTick?: (now: number) => void
  /** How long to wait for unfinished sends after the last one was issued. */
  readonly settleMs?: number
}

export interface OpenLoopResult {
  /** `performance.now()` of offset 0. */
  readonly startedAt: number
  /** When the last send was issued. */
  readonly issuedUntil: number
  readonly planned: number
  readonly firstMeasured: number
  readonly issued: number
  readonly skipped: number
  readonly committed: number
  readonly errors: number
  readonly firstError: string | undefined
  /** Issue time − intended time, for measured sends. */
  readonly lag: LatencyHistogram
  /** Intended time → send resolved (the commit returned), for measured sends. */
  readonly commitLatency: LatencyHistogram
  /** Sends that had not resolved after `settleMs`. */
  readonly unsettled: number
}

export const runOpenLoop = async (o: OpenLoopOptions): Promise<OpenLoopResult> => {
  const offsets = scheduleOffsets(o.ratePerSec, o.durationMs)
  const firstMeasured = firstMeasuredIndex(offsets, o.warmupMs)
  const lag = new LatencyHistogram()
  const commitLatency = new LatencyHistogram()
  let inFlight = 0
  let issued = 0
  let skipped = 0
  let committed = 0
  let errors = 0
  let firstError: string | undefined
  let idle: (() => void) | undefined
  const startedAt = performance.now() + 2
  let issuedUntil = startedAt
  let lastTick = 0

  const issue = (seq: number, intendedAt: number, now: number) => {
    if (seq >= firstMeasured) lag.recordMs(now - intendedAt)
    if (inFlight >= o.maxInFlight) {
      skipped++
      return
    }
    inFlight++
    issued++
    o.send(seq, intendedAt)
      .then(
        () => {
          const at = performance.now()
          committed++
          if (seq >= firstMeasured) commitLatency.recordMs(at - intendedAt)
          o.onCommitted?.(seq, intendedAt, at)
        },
        (error: unknown) => {
          errors++
          firstError ??= error instanceof Error ? error.message : String(error)
        },
      )
      .finally(() => {
        inFlight--
        if (inFlight === 0) idle?.()
      })
  }

  await new Promise<void>((resolve) => {
    let next = 0
    const tick = () => {
      const now = performance.now()
      while (next < offsets.length && startedAt + (offsets[next] as number) <= now) {
        issue(next, startedAt + (offsets[next] as number), now)
        next++
      }
      if (o.onTick !== undefined && now - lastTick >= 100) {
        lastTick = now
        o.onTick(now)
      }
      if (next >= offsets.length) {
        issuedUntil = now
        resolve()
        return
      }
      const wait = startedAt + (offsets[next] as number) - performance.now()
      // Never early: a timer fires at or after its delay; the lateness is recorded as lag.
      setTimeout(tick, Math.max(1, Math.ceil(Math.min(wait, 100))))
    }
    tick()
  })
  if (inFlight > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, o.settleMs ?? 10_000)
      idle = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }
  return {
    startedAt,
    issuedUntil,
    planned: offsets.length,
    firstMeasured,
    issued,
    skipped,
    committed,
    errors,
    firstError,
    lag,
    commitLatency,
    unsettled: inFlight,
  }
}

export interface ClosedLoopOptions {
  readonly concurrency: number
  readonly durationMs: number
  readonly warmupMs: number
  /** One operation of worker `worker`; a worker starts the next one when it resolves. */
  readonly op: (worker: number, seq: number) => Promise<void>
  readonly onTick?: (now: number) => void
}

export interface ClosedLoopResult {
  readonly startedAt: number
  /** Operations that started after the warm-up and finished before the end. */
  readonly measured: number
  readonly windowMs: number
  /** Every operation issued, warm-up included. */
  readonly total: number
  readonly errors: number
  readonly firstError: string | undefined
  /** Duration of each measured operation (service time: closed-loop latency is not open-loop latency). */
  readonly latency: LatencyHistogram
}

/**
 * Closed-loop load: `concurrency` workers each run one operation after the other as fast
 * as they can. Used where concurrency is the variable under study (the commit-lock knee,
 * maximum throughput), never for open-loop latency.
 */
export const runClosedLoop = async (o: ClosedLoopOptions): Promise<ClosedLoopResult> => {
  const latency = new LatencyHistogram()
  const startedAt = performance.now()
  const measureFrom = startedAt + o.warmupMs
  const endAt = startedAt + o.durationMs
  let seq = 0
  let measured = 0
  let errors = 0
  let firstError: string | undefined
  let lastTick = 0
  const worker = async (w: number) => {
    for (;;) {
      const begin = performance.now()
      if (begin >= endAt) return
      if (o.onTick !== undefined && begin - lastTick >= 100) {
        lastTick = begin
        o.onTick(begin)
      }
      try {
        await o.op(w, seq++)
        const end = performance.now()
        // Give timers and I/O a turn: an in-process operation that never waits on a socket
        // (the memory transport) would otherwise starve every receiver until the block ends.
        await new Promise((resolve) => setImmediate(resolve))
        if (begin >= measureFrom && end <= endAt) {
          measured++
          latency.recordMs(end - begin)
        }
      } catch (error) {
        errors++
        firstError ??= error instanceof Error ? error.message : String(error)
        // An erroring operation must not spin.
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }
  }
  await Promise.all(Array.from({ length: o.concurrency }, (_, w) => worker(w)))
  return {
    startedAt,
    measured,
    windowMs: o.durationMs - o.warmupMs,
    total: seq,
    errors,
    firstError,
    latency,
  }
}
