/**
 * Summaries of per-block values: the median is the headline, the spread is min–max and
 * the interquartile range.
 */

export interface Spread {
  readonly n: number
  readonly median: number
  readonly min: number
  readonly max: number
  readonly q1: number
  readonly q3: number
}

/** Quantile (0–1) with linear interpolation between closest ranks (type 7, as R and NumPy default). */
export const quantile = (values: readonly number[], q: number): number => {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return Number.NaN
  const position = (sorted.length - 1) * Math.min(1, Math.max(0, q))
  const lower = Math.floor(position)
  const upper = Math.ceil(position)
  const lo = sorted[lower] as number
  const hi = sorted[upper] as number
  return lo + (hi - lo) * (position - lower)
}

export const median = (values: readonly number[]): number => quantile(values, 0.5)

export const spread = (values: readonly number[]): Spread => {
  const finite = values.filter((v) => Number.isFinite(v))
  if (finite.length === 0)
    return { n: 0, median: Number.NaN, min: Number.NaN, max: Number.NaN, q1: Number.NaN, q3: Number.NaN }
  return {
    n: finite.length,
    median: quantile(finite, 0.5),
    min: Math.min(...finite),
    max: Math.max(...finite),
    q1: quantile(finite, 0.25),
    q3: quantile(finite, 0.75),
  }
}

/** Ratio of two medians; NaN when either is missing. */
export const ratio = (a: number, b: number): number =>
  Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : Number.NaN
