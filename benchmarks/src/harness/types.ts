import type { Spread } from "./stats.js"

/** Transports the suite compares. */
export type TransportId = "postgres-notify" | "nats" | "redis-streams" | "memory"

export const allTransports: readonly TransportId[] = ["postgres-notify", "nats", "redis-streams", "memory"]

/** What one block measured. Metric names are shared across scenarios (see report/format.ts). */
export interface BlockMeasurement {
  readonly metrics: Readonly<Record<string, number>>
  /** Why the block is saturated (empty when it is not). */
  readonly flags: readonly string[]
  readonly notes?: readonly string[]
}

export interface BlockRecord extends BlockMeasurement {
  readonly arm: string
  readonly block: number
  /** A discarded warm-up block. */
  readonly warmup: boolean
  readonly error?: string
}

export interface ArmSummary {
  readonly arm: string
  readonly label: string
  readonly transport: TransportId | "postgres"
  /** `sdk`, `raw`, or a scenario-specific variant (knee modes). */
  readonly variant: string
  readonly params: Readonly<Record<string, number | string>>
  readonly status: "ok" | "not-available" | "error"
  /** Why an arm was not measured (status not ok). */
  readonly reason?: string
  readonly blocks: number
  readonly saturatedBlocks: number
  readonly flags: readonly string[]
  /** Median and spread of each metric over the arm's measured (non-warm-up) blocks. */
  readonly metrics: Readonly<Record<string, Spread>>
}

export interface ScenarioResult {
  readonly id: string
  readonly title: string
  readonly method: readonly string[]
  readonly arms: readonly ArmSummary[]
  readonly blocks: readonly BlockRecord[]
  readonly notes: readonly string[]
  /** Scenario-specific derived results (ratios, the knee). */
  readonly derived?: Readonly<Record<string, unknown>>
  readonly durationMs: number
  readonly error?: string
}

export interface MachineFacts {
  readonly cpuModel: string
  readonly cores: number
  readonly memoryGiB: number
  readonly os: string
  readonly kernel: string
  readonly node: string
  readonly loadAverageStart: readonly number[]
  readonly loadAverageEnd?: readonly number[]
  readonly gitCommit: string
  readonly gitDirty: boolean
  readonly servers: Readonly<Record<string, string>>
  readonly postgresSettings: Readonly<Record<string, string>>
  readonly packages: Readonly<Record<string, string>>
}

export interface RunResult {
  readonly schema: "bus-benchmarks/1"
  readonly quick: boolean
  readonly startedAt: string
  readonly finishedAt: string
  readonly durationMs: number
  readonly profile: Readonly<Record<string, unknown>>
  readonly machine: MachineFacts
  readonly transports: Readonly<Record<string, { readonly available: boolean; readonly reason?: string }>>
  readonly queryCountMethod?: string
  readonly scenarios: readonly ScenarioResult[]
  readonly warnings: readonly string[]
  readonly interrupted?: boolean
}
