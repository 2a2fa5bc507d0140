/**
 * Run parameters. `full` is what the committed report is made with (~20 minutes on a
 * 2-core machine); `quick` checks the whole harness end to end in under 3 minutes and
 * its numbers are marked as such: blocks are too short and too few to trust.
 */
export interface Profile {
  readonly name: "quick" | "full"
  /** Block length and its discarded warm-up (ms). */
  readonly blockMs: number
  readonly warmupMs: number
  readonly drainMs: number
  readonly readyTimeoutMs: number
  readonly throughput: { readonly blocks: number; readonly warmupBlocks: number; readonly producers: number }
  readonly latency: {
    readonly blocks: number
    readonly warmupBlocks: number
    readonly rates: readonly number[]
    readonly raw: boolean
  }
  readonly knee: {
    readonly blocks: number
    readonly warmupBlocks: number
    readonly blockMs: number
    readonly concurrency: readonly number[]
    readonly eventsPerTx: number
  }
  readonly dbLoad: {
    /** Wait between setting the idle subscribers up and counting (≥ one fallback poll, 10 s, in the full run). */
    readonly idleSettleMs: number
    readonly idleWindowMs: number
    readonly idleBlocks: number
    readonly subscriberCounts: readonly number[]
    readonly pollIntervalMs: number
    readonly loadRate: number
    readonly loadSubscribers: number
    readonly loadBlockMs: number
    readonly loadBlocks: number
  }
  readonly fanout: {
    readonly blocks: number
    readonly subscriberCounts: readonly number[]
    /** Deliveries per second aimed at (rate = this / subscribers, within [minRate, maxRate]). */
    readonly deliveriesPerSec: number
    readonly minRate: number
    readonly maxRate: number
    readonly setupTimeoutMs: number
    /** The targets' arms: this many subscribers vs one, both at `targetRate` events/s. */
    readonly targetSubscribers: number
    readonly targetRate: number
    /** SSE clients (in a separate process) of one channel, at `sseRate` events/s; 0 skips the arm. */
    readonly sseClients: number
    readonly sseRate: number
    readonly sseConnectTimeoutMs: number
  }
  readonly payload: {
    readonly blocks: number
    readonly warmupBlocks: number
    readonly sizes: readonly number[]
    readonly rate: number
    readonly raw: boolean
  }
  readonly recovery: {
    readonly blocks: number
    readonly rate: number
    readonly beforeMs: number
    readonly outageMs: number
    readonly catchUpTimeoutMs: number
  }
  readonly relay: {
    readonly blocks: number
    /** Backlog sizes bulk-loaded before the relay starts. */
    readonly sizes: readonly number[]
    /** Longest wait for one backlog to drain (a slower relay is reported as not drained). */
    readonly drainTimeoutMs: number
    /** Rate and block length of the Postgres CPU comparison (INSERT alone vs broker path). */
    readonly cpuRate: number
    readonly cpuBlockMs: number
  }
  /** Relay scaling: one backlog drained by each number of relay processes. */
  readonly relayScaling: {
    readonly blocks: number
    readonly processes: readonly number[]
    readonly events: number
    readonly drainTimeoutMs: number
  }
}

export const fullProfile: Profile = {
  name: "full",
  blockMs: 3_000,
  warmupMs: 750,
  drainMs: 5_000,
  readyTimeoutMs: 30_000,
  throughput: { blocks: 3, warmupBlocks: 1, producers: 8 },
  latency: { blocks: 3, warmupBlocks: 0, rates: [100, 1_000, 5_000], raw: true },
  knee: { blocks: 3, warmupBlocks: 0, blockMs: 2_000, concurrency: [1, 2, 4, 8, 16, 32], eventsPerTx: 5 },
  dbLoad: {
    idleSettleMs: 12_000,
    idleWindowMs: 60_000,
    idleBlocks: 1,
    subscriberCounts: [100, 1_000],
    pollIntervalMs: 3_000,
    loadRate: 500,
    loadSubscribers: 100,
    loadBlockMs: 5_000,
    loadBlocks: 2,
  },
  fanout: {
    blocks: 3,
    subscriberCounts: [1, 100, 1_000, 10_000],
    deliveriesPerSec: 20_000,
    minRate: 2,
    maxRate: 200,
    setupTimeoutMs: 120_000,
    targetSubscribers: 1_000,
    targetRate: 100,
    sseClients: 10_000,
    sseRate: 20,
    sseConnectTimeoutMs: 120_000,
  },
  payload: { blocks: 2, warmupBlocks: 0, sizes: [64, 1_024, 7_900, 65_536], rate: 200, raw: true },
  recovery: { blocks: 2, rate: 200, beforeMs: 3_000, outageMs: 5_000, catchUpTimeoutMs: 60_000 },
  relay: {
    blocks: 1,
    sizes: [25_000, 50_000, 100_000],
    drainTimeoutMs: 30_000,
    cpuRate: 500,
    cpuBlockMs: 4_000,
  },
  relayScaling: { blocks: 2, processes: [1, 2, 3], events: 60_000, drainTimeoutMs: 60_000 },
}

export const quickProfile: Profile = {
  name: "quick",
  blockMs: 1_000,
  warmupMs: 250,
  drainMs: 2_000,
  readyTimeoutMs: 15_000,
  throughput: { blocks: 2, warmupBlocks: 0, producers: 8 },
  latency: { blocks: 1, warmupBlocks: 0, rates: [100, 1_000, 5_000], raw: false },
  knee: { blocks: 1, warmupBlocks: 0, blockMs: 800, concurrency: [1, 4, 16], eventsPerTx: 5 },
  dbLoad: {
    idleSettleMs: 1_500,
    idleWindowMs: 5_000,
    idleBlocks: 1,
    subscriberCounts: [100, 1_000],
    pollIntervalMs: 3_000,
    loadRate: 200,
    loadSubscribers: 100,
    loadBlockMs: 2_000,
    loadBlocks: 1,
  },
  fanout: {
    blocks: 1,
    subscriberCounts: [1, 100, 1_000],
    deliveriesPerSec: 10_000,
    minRate: 5,
    maxRate: 200,
    setupTimeoutMs: 20_000,
    targetSubscribers: 1_000,
    targetRate: 100,
    sseClients: 10_000,
    sseRate: 20,
    sseConnectTimeoutMs: 60_000,
  },
  payload: { blocks: 1, warmupBlocks: 0, sizes: [64, 1_024, 7_900, 65_536], rate: 100, raw: false },
  recovery: { blocks: 1, rate: 100, beforeMs: 1_000, outageMs: 2_000, catchUpTimeoutMs: 20_000 },
  relay: { blocks: 1, sizes: [10_000, 25_000], drainTimeoutMs: 20_000, cpuRate: 200, cpuBlockMs: 2_000 },
  relayScaling: { blocks: 1, processes: [1, 2, 3], events: 15_000, drainTimeoutMs: 30_000 },
}
