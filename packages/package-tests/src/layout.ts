/**
 * The repository's layout rules (issue 14, docs/architecture.md "Files per transport"), as
 * functions over a directory tree so that the test can run them on the repo and on a small
 * tree built to break them:
 *
 * - one file-naming style: every TypeScript file and every folder under a package's `src/`
 *   and `test/` is camelCase, with dot suffixes (`wakeUps.ts`, `allTenants.test.ts`,
 *   `outboxTransport/`). Test fixtures (shaped like the project they stand for) and generated
 *   code are not ours to name.
 * - no import cycles between folders of a package's `src/`. A file directly in `src/` (the
 *   package's role files: `errors.ts`, `cursor.ts`, `store.ts`, ...) counts as a folder of
 *   its own: everything may use `errors.ts`, but `errors.ts` may not use what uses it.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join, posix, relative, sep } from "node:path"

/** The folders that hold packages: each child with a `src/` is checked. */
export const layoutRoots = ["packages", "test-infra", "benchmarks", "examples"] as const

const SKIP = new Set(["node_modules", "dist", ".turbo", "results"])
const NOT_OURS = new Set(["fixtures", "generated"])
const SOURCE = /\.(ts|tsx|mts)$/
const FILE_STYLE = /^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*\.(ts|tsx|mts)$/
const FOLDER_STYLE = /^[a-z][a-zA-Z0-9]*$/

const toPosix = (p: string) => p.split(sep).join("/")

/** Every package folder under `root` (a folder with a `package.json` and a `src/`). */
export const packageDirs = (root: string): string[] => {
  const out: string[] = []
  for (const top of layoutRoots) {
    const dir = join(root, top)
    let entries: string[]
    try {
      entries = readdirSync(dir)
    } catch {
      continue
    }
    if (entries.includes("src")) out.push(dir)
    for (const name of entries) {
      try {
        if (readdirSync(join(dir, name)).includes("src")) out.push(join(dir, name))
      } catch {
        // not a folder
      }
    }
  }
  return out
}

/** Source files under `dir` (relative to it, `/`-separated), skipping build output. */
const walk = (dir: string, base = dir, out: string[] = []): string[] => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(e.name) || e.name.startsWith(".")) continue
    const p = join(dir, e.name)
    if (e.isDirectory()) walk(p, base, out)
    else out.push(toPosix(relative(base, p)))
  }
  return out
}

/** File and folder names under the packages' `src/` and `test/` that break the style. */
export const styleViolations = (root: string): string[] => {
  const bad = new Set<string>()
  for (const pkg of packageDirs(root)) {
    for (const part of ["src", "test"]) {
      let files: string[]
      try {
        files = walk(join(pkg, part))
      } catch {
        continue
      }
      for (const file of files) {
        const segments = file.split("/")
        if (segments.some((s) => NOT_OURS.has(s))) continue
        const where = toPosix(relative(root, join(pkg, part)))
        for (const folder of segments.slice(0, -1)) {
          if (!FOLDER_STYLE.test(folder))
            bad.add(`${where}/${file.slice(0, file.indexOf(folder) + folder.length)}/`)
        }
        const name = segments.at(-1) as string
        if (SOURCE.test(name) && !FILE_STYLE.test(name)) bad.add(`${where}/${file}`)
      }
    }
  }
  return [...bad].sort()
}

const IMPORT = /(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}\/[^"']+)["']/g

/** The node a file of `src/` belongs to: its folder, or the file itself when it is in `src/`. */
const nodeOf = (file: string) => (file.includes("/") ? `${posix.dirname(file)}/` : file)

/**
 * The import cycles between folders of one package's `src/`: each one as the list of
 * file-to-file imports that close it (empty when there is none).
 */
export const folderCycles = (srcDir: string): string[][] => {
  const files = walk(srcDir).filter((f) => SOURCE.test(f))
  const known = new Set(files)
  const edges = new Map<string, Map<string, string>>() // node -> node -> one example import
  for (const file of files) {
    const text = readFileSync(join(srcDir, file), "utf8")
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] as string
      const target = posix.normalize(posix.join(posix.dirname(file), spec))
      const stem = target.replace(/\.(js|ts|tsx|mts|mjs)$/, "")
      const hit = [target, `${stem}.ts`, `${stem}.tsx`, `${stem}.mts`].find((c) => known.has(c))
      if (hit === undefined) continue // outside src/, or not a source file
      const from = nodeOf(file)
      const to = nodeOf(hit)
      if (from === to) continue
      if (!edges.has(from)) edges.set(from, new Map())
      const out = edges.get(from) as Map<string, string>
      if (!out.has(to)) out.set(to, `${file} -> ${hit}`)
    }
  }
  // Tarjan's strongly connected components: a component of more than one node is a cycle.
  let index = 0
  const idx = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const cycles: string[][] = []
  const visit = (v: string) => {
    idx.set(v, index)
    low.set(v, index)
    index++
    stack.push(v)
    onStack.add(v)
    for (const w of edges.get(v)?.keys() ?? []) {
      if (!idx.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number))
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) as number, idx.get(w) as number))
    }
    if (low.get(v) === idx.get(v)) {
      const component: string[] = []
      let w: string
      do {
        w = stack.pop() as string
        onStack.delete(w)
        component.push(w)
      } while (w !== v)
      // only a cycle through a folder: root files importing each other are one folder's business
      if (component.length > 1 && component.some((n) => n.endsWith("/"))) {
        const members = new Set(component)
        const imports: string[] = []
        for (const a of component) {
          for (const [b, example] of edges.get(a) ?? []) if (members.has(b)) imports.push(example)
        }
        cycles.push(imports.sort())
      }
    }
  }
  for (const v of [...new Set(files.map(nodeOf))].sort()) if (!idx.has(v)) visit(v)
  return cycles
}
