/**
 * Finds the TypeScript examples a reader meets: the ```ts / ```typescript blocks of
 * README.md and docs/*.md, and the fenced blocks under `@example` in the published
 * packages' TSDoc. Each becomes one module for the compiler, remembering where it came from
 * so an error points at the doc line, not at a temp file.
 *
 * A block whose info string carries `no-check` (```ts no-check) is an intentional fragment
 * and is skipped; keep those rare and say in the text around them why they cannot compile.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join, relative } from "node:path"

export interface Snippet {
  /** Repository-relative file the example is in. */
  readonly file: string
  /** 1-based line in `file` of the example's first code line. */
  readonly line: number
  readonly code: string
}

const fence = /^(\s*)(`{3,})(.*)$/

const isTs = (info: string): boolean => /^(ts|typescript)\b/.test(info.trim())
const optedOut = (info: string): boolean => /\bno-check\b/.test(info)

/** The ```ts blocks of one Markdown text, except `no-check` ones. */
export const markdownSnippets = (file: string, text: string): Array<Snippet> => {
  const lines = text.split("\n")
  const out: Array<Snippet> = []
  for (let i = 0; i < lines.length; i++) {
    const open = fence.exec(lines[i] ?? "")
    if (!open) continue
    const [, indent = "", ticks = "", info = ""] = open
    // Find the closing fence of this block whatever its language, so a ```sh block's body
    // is never read as a fence.
    let end = i + 1
    // A closing fence is at least as many backticks and nothing else (CommonMark).
    const close = new RegExp(`^\\s*\`{${ticks.length},}\\s*$`)
    while (end < lines.length && !close.test(lines[end] ?? "")) end++
    if (isTs(info) && !optedOut(info)) {
      const body = lines.slice(i + 1, end).map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l))
      out.push({ file, line: i + 2, code: body.join("\n") })
    }
    i = end
  }
  return out
}

/**
 * The fenced ```ts blocks in one source file's doc comments: `@example` blocks and the
 * examples written inline in a description alike.
 */
export const tsdocSnippets = (file: string, text: string): Array<Snippet> => {
  const lines = text.split("\n")
  const out: Array<Snippet> = []
  const inComment = (l: string) => /^\s*\*/.test(l) && !/^\s*\*\//.test(l)
  const strip = (l: string) => l.replace(/^\s*\*\s?/, "")
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? ""
    if (!inComment(line)) continue
    const open = fence.exec(strip(line))
    if (!open) continue
    const info = open[3] ?? ""
    let end = i + 1
    while (end < lines.length && inComment(lines[end] ?? "") && !/^\s*```\s*$/.test(strip(lines[end] ?? "")))
      end++
    if (isTs(info) && !optedOut(info)) {
      out.push({
        file,
        line: i + 2,
        code: lines
          .slice(i + 1, end)
          .map(strip)
          .join("\n"),
      })
    }
    i = end
  }
  return out
}

const walk = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  )

/** Every checked example of the repository rooted at `root`. */
export const allSnippets = (root: string, packages: ReadonlyArray<string>): Array<Snippet> => {
  const docs = readdirSync(join(root, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => join(root, "docs", f))
  const markdown = [join(root, "README.md"), ...docs].flatMap((path) =>
    markdownSnippets(relative(root, path), readFileSync(path, "utf8")),
  )
  const tsdoc = packages.flatMap((p) =>
    walk(join(root, "packages", p, "src")).flatMap((path) =>
      tsdocSnippets(relative(root, path), readFileSync(path, "utf8")),
    ),
  )
  return [...markdown, ...tsdoc]
}
