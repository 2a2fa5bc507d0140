/**
 * Terminal output: colour when writing to a terminal (and `NO_COLOR` is not set), plain
 * text when piped, and a simple aligned table.
 *
 * @module
 */

/** A stream the CLI writes to. */
export interface Out {
  write(text: string): unknown
  readonly isTTY?: boolean | undefined
}

/** Whether to colour output written to `out`. */
export const useColour = (
  out: Out,
  env: Readonly<Record<string, string | undefined>> = process.env,
): boolean => {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== "" && env.FORCE_COLOR !== "0") return true
  return out.isTTY === true
}

/** SGR styles; each is the identity without colour. */
export const styles = (colour: boolean) => {
  const wrap = (open: string) => (text: string) => (colour ? `\u001b[${open}m${text}\u001b[0m` : text)
  return {
    bold: wrap("1"),
    dim: wrap("2"),
    red: wrap("31"),
    green: wrap("32"),
    yellow: wrap("33"),
    blue: wrap("34"),
    magenta: wrap("35"),
    cyan: wrap("36"),
  }
}

/** The colour functions in use: real ones on a TTY, identity functions when piped. */
export type Styles = ReturnType<typeof styles>

// biome-ignore lint/suspicious/noControlCharactersInRegex: strips SGR sequences to measure width
const ansi = /\u001b\[[0-9;]*m/g

/** Visible width of `text` (SGR sequences left out). */
export const width = (text: string): number => text.replace(ansi, "").length

/** Rows of cells as aligned columns, two spaces apart. */
export const table = (rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths: Array<number> = []
  for (const row of rows) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, width(cell))
  }
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell + " ".repeat((widths[i] ?? 0) - width(cell))))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")
}

/** `n` with thousands separators. */
export const count = (n: number): string => Math.round(n).toLocaleString("en-US")

/** Milliseconds as a short duration: `850 ms`, `12.3 s`, `4 min`, `2.5 h`. */
export const duration = (ms: number): string => {
  if (ms < 1_000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)} s`
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`
  return `${(ms / 3_600_000).toFixed(1)} h`
}
