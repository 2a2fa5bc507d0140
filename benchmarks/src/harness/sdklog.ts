import { appendFileSync, mkdirSync } from "node:fs"
import { dirname } from "node:path"
import { format } from "node:util"

/**
 * The SDK logs through Effect's logger to the console (transport choice, reconnects).
 * During a run those lines would tear the progress display apart, so they go to a file
 * instead, and the run reports how many there were.
 */
export class ConsoleCapture {
  lines = 0
  warnings = 0
  readonly #original = {
    log: console.log,
    info: console.info,
    warn: console.warn,
    error: console.error,
    debug: console.debug,
  }

  constructor(readonly file: string) {
    mkdirSync(dirname(file), { recursive: true })
  }

  start(): void {
    const write =
      (level: string) =>
      (...args: unknown[]) => {
        const text = format(...args)
        this.lines++
        if (level === "warn" || level === "error" || /\b(WARN|ERROR)\b/.test(text.slice(0, 40)))
          this.warnings++
        try {
          appendFileSync(this.file, `${text}\n`)
        } catch {
          // the log is a convenience; never fail a run over it
        }
      }
    console.log = write("log")
    console.info = write("info")
    console.warn = write("warn")
    console.error = write("error")
    console.debug = write("debug")
  }

  stop(): void {
    Object.assign(console, this.#original)
  }
}
