import { fmtMs, fmtNum, type Progress } from "./progress.js"
import { spread } from "./stats.js"
import type { ArmSummary, BlockMeasurement, BlockRecord, TransportId } from "./types.js"

/**
 * Blocks and arms: every arm (a transport, a rate, a mode) is measured in several short
 * blocks, and the arms are interleaved (block 1 of every arm, then block 2 of every arm,
 * the order rotated each round), so a slow drift of the machine (another process, a
 * checkpoint, thermal throttling) spreads over all arms instead of biasing one. Optional
 * warm-up blocks run first and are discarded.
 */

export interface Arm {
  readonly id: string
  readonly label: string
  readonly transport: TransportId | "postgres"
  readonly variant: string
  readonly params: Readonly<Record<string, number | string>>
  /** When set, the arm is reported as not available and never run. */
  readonly unavailable?: string
  readonly setup?: () => Promise<void>
  readonly run: (block: number, status: (text: string) => void) => Promise<BlockMeasurement>
  readonly teardown?: () => Promise<void>
}

export interface InterleaveOptions {
  readonly blocks: number
  readonly warmupBlocks: number
  readonly progress: Progress
  /** Scenario name for progress lines. */
  readonly scenario: string
  /** An arm that failed this many blocks in a row is dropped. */
  readonly maxConsecutiveErrors?: number
  /** Stop early (SIGINT). */
  readonly aborted?: () => boolean
}

/** Order of the arms in round `round`: rotated by one each round. */
export const roundOrder = <T>(arms: readonly T[], round: number): T[] => {
  if (arms.length === 0) return []
  const k = round % arms.length
  return [...arms.slice(k), ...arms.slice(0, k)]
}

/** A short human summary of a block's metrics for the progress line. */
export const describeMetrics = (m: Readonly<Record<string, number>>): string => {
  const parts: string[] = []
  const has = (k: string) => m[k] !== undefined && Number.isFinite(m[k])
  if (has("p50")) parts.push(`p50 ${fmtMs(m.p50 as number)}`)
  if (has("p99")) parts.push(`p99 ${fmtMs(m.p99 as number)}`)
  if (has("max")) parts.push(`max ${fmtMs(m.max as number)}`)
  if (has("commitsPerSec")) parts.push(`${fmtNum(m.commitsPerSec as number)} commits/s`)
  if (has("deliveredPerSec")) parts.push(`${fmtNum(m.deliveredPerSec as number)} ev/s delivered`)
  if (has("queriesPerMin")) parts.push(`${fmtNum(m.queriesPerMin as number)} queries/min`)
  if (has("queriesPerEvent")) parts.push(`${fmtNum(m.queriesPerEvent as number)} queries/event`)
  if (has("heapBytesPerSubscriber")) parts.push(`${fmtNum(m.heapBytesPerSubscriber as number)} B heap/sub`)
  if (has("catchUpMs")) parts.push(`catch-up ${fmtMs(m.catchUpMs as number)}`)
  if (has("lost")) parts.push(`lost ${m.lost}`)
  if (has("lagP99")) parts.push(`lag p99 ${fmtMs(m.lagP99 as number)}`)
  if (has("relayForwardedPerSec")) parts.push(`relay ${fmtNum(m.relayForwardedPerSec as number)} ev/s`)
  if (has("relayReadMeanMs")) parts.push(`read ${fmtMs(m.relayReadMeanMs as number)} × ${m.relayReads}`)
  if (has("cpuUsPerEvent")) parts.push(`cpu ${fmtNum(m.cpuUsPerEvent as number)} µs/ev`)
  if (has("cpuUsPerCommit")) parts.push(`cpu ${fmtNum(m.cpuUsPerCommit as number)} µs/commit`)
  return parts.join("  ")
}

export interface InterleaveResult {
  readonly arms: ArmSummary[]
  readonly blocks: BlockRecord[]
}

export const runInterleaved = async (
  arms: readonly Arm[],
  o: InterleaveOptions,
): Promise<InterleaveResult> => {
  const blocks: BlockRecord[] = []
  const failed = new Map<string, string>()
  const errorsInRow = new Map<string, number>()
  const live: Arm[] = []
  for (const arm of arms) {
    if (arm.unavailable !== undefined) {
      o.progress.line(`${o.scenario}  ${arm.label}: not available: ${arm.unavailable}`)
      continue
    }
    try {
      await arm.setup?.()
      live.push(arm)
    } catch (error) {
      const reason = `setup failed: ${error instanceof Error ? error.message : String(error)}`
      failed.set(arm.id, reason)
      o.progress.line(`${o.scenario}  ${arm.label}: ${reason}`)
    }
  }
  const total = o.warmupBlocks + o.blocks
  try {
    for (let round = 0; round < total; round++) {
      const warmup = round < o.warmupBlocks
      for (const arm of roundOrder(live, round)) {
        if (o.aborted?.()) return summarize(arms, blocks, failed)
        if (failed.has(arm.id)) continue
        const label = `${o.scenario}  ${arm.label}  ${warmup ? "warm-up" : `block ${round - o.warmupBlocks + 1}/${o.blocks}`}`
        try {
          const m = await arm.run(round, (text) => o.progress.status(`${label}  ${text}`))
          if (o.aborted?.()) {
            o.progress.line(`${label}  discarded: the run was interrupted during the block`)
            return summarize(arms, blocks, failed)
          }
          blocks.push({ ...m, arm: arm.id, block: round, warmup })
          errorsInRow.set(arm.id, 0)
          const sat = m.flags.length > 0 ? `  [SATURATED: ${m.flags.join(", ")}]` : ""
          o.progress.line(`${label}  ${describeMetrics(m.metrics)}${warmup ? "  (discarded)" : ""}${sat}`)
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error)
          blocks.push({ arm: arm.id, block: round, warmup, metrics: {}, flags: ["error"], error: message })
          o.progress.line(`${label}  ERROR: ${message}`)
          const n = (errorsInRow.get(arm.id) ?? 0) + 1
          errorsInRow.set(arm.id, n)
          if (n >= (o.maxConsecutiveErrors ?? 2))
            failed.set(arm.id, `failed ${n} blocks in a row: ${message}`)
        }
      }
    }
  } finally {
    for (const arm of live) {
      try {
        await arm.teardown?.()
      } catch (error) {
        o.progress.line(`${o.scenario}  ${arm.label}: teardown failed: ${String(error)}`)
      }
    }
  }
  return summarize(arms, blocks, failed)
}

export const summarize = (
  arms: readonly Arm[],
  blocks: readonly BlockRecord[],
  failed: ReadonlyMap<string, string> = new Map(),
): InterleaveResult => {
  const summaries: ArmSummary[] = arms.map((arm) => {
    const mine = blocks.filter((b) => b.arm === arm.id && !b.warmup && b.error === undefined)
    const keys = new Set(mine.flatMap((b) => Object.keys(b.metrics)))
    const metrics: Record<string, ReturnType<typeof spread>> = {}
    for (const key of keys) metrics[key] = spread(mine.map((b) => b.metrics[key] ?? Number.NaN))
    const flags = [...new Set(mine.flatMap((b) => b.flags))]
    const base = {
      arm: arm.id,
      label: arm.label,
      transport: arm.transport,
      variant: arm.variant,
      params: arm.params,
      blocks: mine.length,
      saturatedBlocks: mine.filter((b) => b.flags.length > 0).length,
      flags,
      metrics,
    }
    if (arm.unavailable !== undefined) return { ...base, status: "not-available", reason: arm.unavailable }
    const failure = failed.get(arm.id)
    if (failure !== undefined && mine.length === 0) return { ...base, status: "error", reason: failure }
    if (mine.length === 0) return { ...base, status: "error", reason: "no block completed" }
    return failure !== undefined ? { ...base, status: "ok", reason: failure } : { ...base, status: "ok" }
  })
  return { arms: summaries, blocks: [...blocks] }
}
