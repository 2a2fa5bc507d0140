import { CpuMeter, type CpuSample } from "../harness/cpu.js"
import { LatencyHistogram } from "../harness/histogram.js"
import { firstMeasuredIndex, runClosedLoop, runOpenLoop, scheduleOffsets } from "../harness/schedule.js"
import type { BlockMeasurement } from "../harness/types.js"
import type { Pipe } from "../targets/pipe.js"

/**
 * One block of delivery load through a {@link Pipe}: open-loop at a fixed rate
 * (latency from the intended send time) or closed-loop with N producers (maximum
 * throughput), then a bounded drain. Returns the block's metrics and saturation flags.
 */

export interface SaturationRules {
  /** Generator lag p99 above this flags `generator-lag` (ms). */
  readonly lagP99Ms: number
  /** Backlog growth over the block above max(this many events, rate × growthSeconds) flags `backlog-growing`. */
  readonly backlogGrowthEvents: number
  readonly backlogGrowthSeconds: number
  /** Achieved commit rate below this share of the offered rate flags `rate-short`. */
  readonly minRateShare: number
}

export const defaultSaturation: SaturationRules = {
  lagP99Ms: 5,
  backlogGrowthEvents: 20,
  backlogGrowthSeconds: 0.1,
  minRateShare: 0.95,
}

export interface DeliveryBlockOptions {
  readonly pipe: Pipe
  readonly channel: string
  readonly subscribers: number
  readonly payloadBytes: number
  readonly durationMs: number
  readonly warmupMs: number
  readonly drainMs: number
  readonly readyTimeoutMs: number
  readonly cpu: CpuMeter
  readonly status: (text: string) => void
  /** Open-loop rate, or closed-loop producers. */
  readonly load:
    | { readonly kind: "open"; readonly rate: number }
    | { readonly kind: "closed"; readonly producers: number }
  readonly saturation?: SaturationRules
  /** Called once the receivers are live and before the load starts (memory probes). */
  readonly afterOpen?: () => Promise<Record<string, number>>
  /** Called after the drain, before the receivers close; its metrics are merged in. */
  readonly beforeClose?: (info: {
    readonly committedEvents: number
    readonly delivered: number
  }) => Promise<Record<string, number>>
}

/** Tracks what receivers got; one byte per (event) for single-receiver sessions (loss, duplicates). */
class Deliveries {
  readonly latency = new LatencyHistogram()
  readonly #seen: Uint8Array | undefined
  delivered = 0
  duplicates = 0
  measuredDelivered = 0
  inWindow = 0
  lastAt = 0
  windowFrom = Number.POSITIVE_INFINITY
  windowTo = Number.NEGATIVE_INFINITY

  constructor(
    capacity: number,
    readonly subscribers: number,
    readonly measured: (seq: number, intendedAt: number) => boolean,
  ) {
    this.#seen = subscribers === 1 ? new Uint8Array(capacity) : undefined
  }

  seen(seq: number): boolean {
    return this.#seen === undefined ? true : (this.#seen[seq] ?? 0) > 0
  }

  receive = (seq: number, intendedAt: number, _subscriber: number, at: number): void => {
    if (this.#seen !== undefined) {
      if (seq >= this.#seen.length) return
      if (this.#seen[seq] !== 0) {
        this.duplicates++
        return
      }
      this.#seen[seq] = 1
    }
    this.delivered++
    this.lastAt = at
    if (at >= this.windowFrom && at <= this.windowTo) this.inWindow++
    if (this.measured(seq, intendedAt)) {
      this.measuredDelivered++
      this.latency.recordMs(at - intendedAt)
    }
  }
}

const capacityFor = (load: DeliveryBlockOptions["load"], durationMs: number): number =>
  load.kind === "open" ? Math.floor((load.rate * durationMs) / 1000) + 1 : 5_000_000

const cpuMetrics = (from: CpuSample, to: CpuSample, events: number): Record<string, number> => {
  const d = CpuMeter.delta(from, to)
  const m: Record<string, number> = {
    cpuProcessMs: d.processMs,
    cpuUsPerEvent: events > 0 ? (d.processMs * 1000) / events : Number.NaN,
  }
  for (const [name, ms] of Object.entries(d.serversMs)) {
    if (ms === undefined) continue
    m[`cpuServerMs.${name}`] = ms
    m[`cpuServerUsPerEvent.${name}`] = events > 0 ? (ms * 1000) / events : Number.NaN
  }
  return m
}

export const runDeliveryBlock = async (o: DeliveryBlockOptions): Promise<BlockMeasurement> => {
  const rules = o.saturation ?? defaultSaturation
  // Open loop: the schedule says which sends are warm-up. Closed loop: sends that started after it.
  const firstMeasured =
    o.load.kind === "open" ? firstMeasuredIndex(scheduleOffsets(o.load.rate, o.durationMs), o.warmupMs) : 0
  let measureFrom = Number.POSITIVE_INFINITY
  const d = new Deliveries(capacityFor(o.load, o.durationMs), o.subscribers, (seq, intendedAt) =>
    o.load.kind === "open" ? seq >= firstMeasured : intendedAt >= measureFrom,
  )
  const session = await o.pipe.open({
    channel: o.channel,
    subscribers: o.subscribers,
    payloadBytes: o.payloadBytes,
    onReceive: d.receive,
    readyTimeoutMs: o.readyTimeoutMs,
  })
  const flags: string[] = []
  const notes: string[] = []
  const extra: Record<string, number> = {}
  try {
    if (o.afterOpen !== undefined) Object.assign(extra, await o.afterOpen())
    let committed = 0
    const backlog: number[] = []
    const cpuStart = o.cpu.sample()
    const perEvent = o.subscribers
    const tick = (now: number, sent: number) => {
      if (now >= d.windowFrom) backlog.push(sent * perEvent - d.delivered)
      o.status(`${sent} committed, ${d.delivered} delivered`)
    }
    let metrics: Record<string, number>
    let expected: number
    if (o.load.kind === "open") {
      const rate = o.load.rate
      const started = performance.now()
      d.windowFrom = started + o.warmupMs
      d.windowTo = started + o.durationMs
      const result = await runOpenLoop({
        ratePerSec: rate,
        durationMs: o.durationMs,
        warmupMs: o.warmupMs,
        maxInFlight: Math.max(64, Math.ceil(rate * 2)),
        send: (seq, intendedAt) => session.send([seq], intendedAt),
        onCommitted: () => {
          committed++
        },
        onTick: (now) => tick(now, committed),
        settleMs: o.drainMs,
      })
      expected = result.committed * perEvent
      const measuredPlanned = result.planned - result.firstMeasured
      const lag = result.lag.summary()
      const windowS = (o.durationMs - o.warmupMs) / 1000
      metrics = {
        offeredPerSec: rate,
        committedPerSec: measuredPlanned > 0 ? result.commitLatency.count / windowS : Number.NaN,
        lagP50: lag.p50,
        lagP99: lag.p99,
        lagMax: lag.max,
        commitP50: result.commitLatency.percentileMs(50),
        commitP99: result.commitLatency.percentileMs(99),
        skipped: result.skipped,
        sendErrors: result.errors,
      }
      if (lag.p99 > rules.lagP99Ms) flags.push("generator-lag")
      if (result.skipped > 0) flags.push("in-flight-cap")
      if (result.errors > 0) {
        flags.push("send-errors")
        notes.push(`send error: ${result.firstError}`)
      }
      if (result.commitLatency.count < rules.minRateShare * measuredPlanned) flags.push("rate-short")
      // Undelivered measured events count at least the time they have waited (no omission).
      await drain(d, expected, o.drainMs, o.status)
      const end = performance.now()
      const offsets = 1000 / rate
      let undelivered = 0
      if (o.subscribers === 1) {
        for (let seq = result.firstMeasured; seq < result.planned; seq++) {
          if (!d.seen(seq)) {
            undelivered++
            d.latency.recordMs(end - (result.startedAt + seq * offsets))
          }
        }
      } else {
        const missing = Math.max(0, (result.planned - result.firstMeasured) * perEvent - d.measuredDelivered)
        undelivered = missing
        d.latency.recordMsTimes(end - (result.startedAt + (result.planned - 1) * offsets), missing)
      }
      metrics.undelivered = undelivered
      if (undelivered > 0) flags.push("undelivered")
    } else {
      const started = performance.now()
      d.windowFrom = started + o.warmupMs
      d.windowTo = started + o.durationMs
      measureFrom = d.windowFrom
      const result = await runClosedLoop({
        concurrency: o.load.producers,
        durationMs: o.durationMs,
        warmupMs: o.warmupMs,
        op: async (_w, seq) => {
          await session.send([seq], performance.now())
          committed++
        },
        onTick: (now) => tick(now, committed),
      })
      expected = committed * perEvent
      metrics = {
        producers: o.load.producers,
        committedPerSec: (result.measured * 1000) / result.windowMs,
        commitP50: result.latency.percentileMs(50),
        commitP99: result.latency.percentileMs(99),
        sendErrors: result.errors,
      }
      if (result.errors > 0) {
        flags.push("send-errors")
        notes.push(`send error: ${result.firstError}`)
      }
      await drain(d, expected, o.drainMs, o.status)
      const undelivered = Math.max(0, expected - d.delivered)
      metrics.undelivered = undelivered
      if (undelivered > 0) flags.push("undelivered")
    }
    const cpuEnd = o.cpu.sample()
    const windowS = (o.durationMs - o.warmupMs) / 1000
    const lat = d.latency.summary()
    const growth = backlogGrowth(backlog)
    const rate = o.load.kind === "open" ? o.load.rate * perEvent : (metrics.committedPerSec ?? 0) * perEvent
    if (growth > Math.max(rules.backlogGrowthEvents, rate * rules.backlogGrowthSeconds))
      flags.push("backlog-growing")
    if (o.beforeClose !== undefined)
      Object.assign(extra, await o.beforeClose({ committedEvents: committed, delivered: d.delivered }))
    if (session.errors.length > 0) {
      flags.push("receiver-errors")
      notes.push(`receiver error: ${session.errors[0]}`)
    }
    return {
      metrics: {
        ...metrics,
        ...extra,
        subscribers: o.subscribers,
        payloadBytes: o.payloadBytes,
        deliveredPerSec: d.inWindow / windowS,
        delivered: d.delivered,
        duplicates: d.duplicates,
        backlogGrowth: growth,
        p50: lat.p50,
        p90: lat.p90,
        p99: lat.p99,
        p999: lat.p999,
        max: lat.max,
        mean: lat.mean,
        latencyCount: lat.count,
        ...cpuMetrics(cpuStart, cpuEnd, d.delivered),
      },
      flags: [...new Set(flags)],
      notes,
    }
  } finally {
    await session.close()
  }
}

const drain = async (d: Deliveries, expected: number, drainMs: number, status: (t: string) => void) => {
  const deadline = performance.now() + drainMs
  while (d.delivered < expected && performance.now() < deadline) {
    status(`draining: ${d.delivered}/${expected} delivered`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** Mean backlog of the last fifth of the samples minus that of the first fifth. */
export const backlogGrowth = (samples: readonly number[]): number => {
  if (samples.length < 5) return 0
  const k = Math.max(1, Math.floor(samples.length / 5))
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  return mean(samples.slice(-k)) - mean(samples.slice(0, k))
}
