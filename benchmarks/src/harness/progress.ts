/**
 * The progress display: one permanent line per finished block, and on a terminal a
 * transient status line (rewritten in place) while a block runs. Without a TTY (CI, a
 * pipe) only the permanent lines are written, so logs stay readable.
 */

const elapsed = (ms: number): string => {
  const s = Math.floor(ms / 1000)
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`
}

export interface ProgressSink {
  write(text: string): boolean
  readonly isTTY?: boolean
  readonly columns?: number
}

export class Progress {
  readonly #out: ProgressSink
  readonly #tty: boolean
  readonly #started = performance.now()
  #statusShown = false
  #lastStatus = 0

  constructor(out: ProgressSink = process.stderr, tty = out.isTTY === true) {
    this.#out = out
    this.#tty = tty
  }

  get tty(): boolean {
    return this.#tty
  }

  #prefix(): string {
    return `[${elapsed(performance.now() - this.#started)}]`
  }

  #clearStatus(): void {
    if (this.#statusShown) {
      this.#out.write("\r\x1b[2K")
      this.#statusShown = false
    }
  }

  /** A permanent line. */
  line(text: string): void {
    this.#clearStatus()
    this.#out.write(`${this.#prefix()} ${text}\n`)
  }

  /** A heading for a scenario. */
  heading(text: string): void {
    this.#clearStatus()
    this.#out.write(`\n${this.#prefix()} ── ${text}\n`)
  }

  /** A transient status line (TTY only, at most ~10 times a second). */
  status(text: string): void {
    if (!this.#tty) return
    const now = performance.now()
    if (now - this.#lastStatus < 100) return
    this.#lastStatus = now
    const width = Math.max(20, (this.#out.columns ?? 120) - 1)
    const full = `${this.#prefix()} … ${text}`
    this.#out.write(`\r\x1b[2K${full.length > width ? full.slice(0, width) : full}`)
    this.#statusShown = true
  }

  done(): void {
    this.#clearStatus()
  }
}

/** Formats a number of ms for humans: 0.42 ms, 3.1 ms, 120 ms, 2.3 s. */
export const fmtMs = (ms: number): string => {
  if (!Number.isFinite(ms)) return "–"
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`
  if (ms >= 100) return `${ms.toFixed(0)} ms`
  if (ms >= 10) return `${ms.toFixed(1)} ms`
  return `${ms.toFixed(2)} ms`
}

/** Formats a count or rate: 950, 12.3k, 1.20M. */
export const fmtNum = (n: number): string => {
  if (!Number.isFinite(n)) return "–"
  const a = Math.abs(n)
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)}M`
  if (a >= 1e4) return `${(n / 1e3).toFixed(1)}k`
  if (a >= 100) return n.toFixed(0)
  if (a >= 10) return n.toFixed(1)
  return n.toFixed(2)
}
