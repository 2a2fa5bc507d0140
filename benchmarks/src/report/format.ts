/**
 * What every scenario's report section shares: number formats, tables, the "median
 * (min–max)" cell, and the chart collector. Each scenario renders its own section in
 * `src/scenarios/<id>/report.ts`, beside the code that measures it.
 */

import type { Spread } from "../harness/stats.js"
import type { ArmSummary, ScenarioResult } from "../harness/types.js"

/** One scenario's section of the report: its heading and its body (tables, charts, findings). */
export interface ScenarioReport {
  readonly title: string
  readonly render: (s: ScenarioResult, charts: Charts) => string[]
}

export type Fmt = (n: number) => string

export const fmtInt: Fmt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en") : "–")
export const fmtRatio: Fmt = (n) => (Number.isFinite(n) ? `${n.toFixed(2)}×` : "–")
export const fmtBytes: Fmt = (n) =>
  Number.isFinite(n) ? (Math.abs(n) >= 10_240 ? `${(n / 1024).toFixed(1)} KiB` : `${Math.round(n)} B`) : "–"

/** `median (min–max)` when there are several blocks, else the value. */
export const cell = (s: Spread | undefined, fmt: Fmt): string => {
  if (s === undefined || s.n === 0 || !Number.isFinite(s.median)) return "–"
  if (s.n === 1 || s.min === s.max) return fmt(s.median)
  return `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`
}

export const med = (a: ArmSummary | undefined, key: string): number => a?.metrics[key]?.median ?? Number.NaN

export const blocksCell = (a: ArmSummary): string =>
  a.saturatedBlocks > 0
    ? `${a.blocks} ⚠ ${a.saturatedBlocks} saturated (${a.flags.join(", ")})`
    : `${a.blocks}`

export const table = (head: readonly string[], rows: ReadonlyArray<readonly string[]>): string =>
  [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.map((c) => c.replace(/\|/g, "\\|")).join(" | ")} |`),
  ].join("\n")

export const ok = (arms: readonly ArmSummary[]) => arms.filter((a) => a.status === "ok")

export const notMeasured = (arms: readonly ArmSummary[]): string[] =>
  arms
    .filter((a) => a.status !== "ok")
    .map(
      (a) =>
        `- ${a.label}: ${a.status === "not-available" ? "not available" : "not measured"}: ${a.reason ?? "?"}`,
    )

export const pipeName = (a: ArmSummary): string => String(a.params.pipe ?? a.transport)

export class Charts {
  readonly svgs: Record<string, string> = {}
  constructor(readonly path: string) {}
  add(name: string, svg: string, alt: string): string {
    this.svgs[name] = svg
    return `![${alt}](${this.path}/${name})`
  }
}

export const method = (s: ScenarioResult): string => s.method.map((m) => `- ${m}`).join("\n")

export const verdict = (met: boolean | undefined): string =>
  met === undefined ? "**not measured**" : met ? "**met**" : "**not met**"
