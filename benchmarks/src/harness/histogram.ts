import hdr from "hdr-histogram-js"

/**
 * Latency histograms on HdrHistogram: values are recorded in microseconds (integers, 3
 * significant digits) and reported in milliseconds.
 */

/** Percentiles of one histogram, in milliseconds. */
export interface Percentiles {
  readonly count: number
  readonly mean: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly p999: number
  readonly max: number
}

/** Highest value tracked without resizing: 10 minutes. Larger values are clamped to it. */
const HIGHEST_US = 600_000_000

export class LatencyHistogram {
  readonly #h = hdr.build({
    bitBucketSize: 32,
    autoResize: false,
    lowestDiscernibleValue: 1,
    highestTrackableValue: HIGHEST_US,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  })

  /** Records a duration in ms; negative values (clock races) count as 1 µs. */
  recordMs(ms: number): void {
    const us = Math.round(ms * 1000)
    this.#h.recordValue(Math.min(HIGHEST_US, Math.max(1, us)))
  }

  /** Records `count` values of `ms` each. */
  recordMsTimes(ms: number, count: number): void {
    if (count <= 0) return
    const us = Math.round(ms * 1000)
    this.#h.recordValueWithCount(Math.min(HIGHEST_US, Math.max(1, us)), count)
  }

  get count(): number {
    return this.#h.totalCount
  }

  add(other: LatencyHistogram): void {
    this.#h.add(other.#h)
  }

  /** Value at `percentile` (0-100) in ms. */
  percentileMs(percentile: number): number {
    return this.#h.totalCount === 0 ? Number.NaN : this.#h.getValueAtPercentile(percentile) / 1000
  }

  summary(): Percentiles {
    const h = this.#h
    if (h.totalCount === 0) {
      return {
        count: 0,
        mean: Number.NaN,
        p50: Number.NaN,
        p90: Number.NaN,
        p99: Number.NaN,
        p999: Number.NaN,
        max: Number.NaN,
      }
    }
    return {
      count: h.totalCount,
      mean: h.mean / 1000,
      p50: h.getValueAtPercentile(50) / 1000,
      p90: h.getValueAtPercentile(90) / 1000,
      p99: h.getValueAtPercentile(99) / 1000,
      p999: h.getValueAtPercentile(99.9) / 1000,
      max: h.maxValue / 1000,
    }
  }

  reset(): void {
    this.#h.reset()
  }
}
