/**
 * Every TypeScript example in README.md, docs/*.md and the published packages' TSDoc
 * compiles against the built packages, as a user would paste it into an ESM project.
 * Blocks marked ```ts no-check are skipped (intentional fragments). The application's own
 * things an example takes as given (`bus`, `client`, `grantFor`…) are declared once in
 * test/fixtures/doc-context.d.ts.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { typecheck } from "../src/compile.js"
import { allSnippets, markdownSnippets, type Snippet, tsdocSnippets } from "../src/snippets.js"
import { publishedPackages, repoRoot } from "../src/workspace.js"

const dirs: Array<string> = []
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

/** Compiles the snippets as modules of one ESM project; the errors, mapped to their doc lines. */
const compileSnippets = async (snippets: ReadonlyArray<Snippet>): Promise<Array<string>> => {
  const dir = mkdtempSync(join(tmpdir(), "bus-doc-snippets-"))
  dirs.push(dir)
  // The snippets resolve @bus/* and third-party imports through this package's dependencies:
  // the workspace packages as built (their dist/ and exports), like an installed copy.
  symlinkSync(join(repoRoot, "packages", "package-tests", "node_modules"), join(dir, "node_modules"), "dir")
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module", private: true }))
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2023",
        // Browser examples (EventSource) sit beside server ones.
        lib: ["ES2024", "DOM", "DOM.Iterable"],
        module: "NodeNext",
        moduleResolution: "NodeNext",
        moduleDetection: "force",
        strict: true,
        skipLibCheck: true,
        noEmit: true,
        types: ["node"],
      },
      include: ["src/*.ts", "doc-context.d.ts"],
    }),
  )
  // The application's own things the examples take as given (the bus, a pg client, auth):
  // see the file. Library names are never in it; examples import those themselves.
  copyFileSync(join(import.meta.dirname, "fixtures", "doc-context.d.ts"), join(dir, "doc-context.d.ts"))
  mkdirSync(join(dir, "src"))
  const names = snippets.map((s, i) => {
    const name = `snippet-${String(i).padStart(3, "0")}.ts`
    writeFileSync(join(dir, "src", name), `${s.code}\n`)
    return name
  })
  const output = await typecheck(dir)
  if (output === "") return []
  return output
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const m = /^src[\\/](snippet-\d+\.ts)\((\d+),(\d+)\): (.*)$/.exec(line)
      const snippet = m ? snippets[names.indexOf(m[1] ?? "")] : undefined
      if (!m || !snippet) return line
      return `${snippet.file}:${snippet.line + Number(m[2]) - 1}:${m[3]} ${m[4]}`
    })
}

describe("the extractor", () => {
  it("finds ts and typescript blocks, skips no-check and other languages", () => {
    const md = [
      "text",
      "```ts",
      "const a = 1",
      "```",
      "```sh",
      "```ts inside a sh block is not a fence opener here",
      "```",
      "```typescript",
      "const b = 2",
      "```",
      "```ts no-check",
      "fragment(",
      "```",
    ].join("\n")
    expect(markdownSnippets("x.md", md)).toEqual([
      { file: "x.md", line: 3, code: "const a = 1" },
      { file: "x.md", line: 9, code: "const b = 2" },
    ])
  })

  it("finds the fenced blocks of doc comments, under @example or inline", () => {
    const src = [
      "/**",
      " * Does it:",
      " * ```ts",
      " * doIt(0)",
      " * ```",
      " * @example",
      " * ```ts",
      " * doIt(1)",
      " * ```",
      " */",
      "const s = `",
      "```ts",
      "not in a comment",
      "```",
      "`",
    ].join("\n")
    expect(tsdocSnippets("a.ts", src)).toEqual([
      { file: "a.ts", line: 4, code: "doIt(0)" },
      { file: "a.ts", line: 8, code: "doIt(1)" },
    ])
  })

  it("reports a broken snippet at its doc line", async () => {
    const errors = await compileSnippets([
      {
        file: "docs/x.md",
        line: 10,
        code: 'import { createBus } from "@bus/core"\nconst n: number = createBus',
      },
    ])
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/^docs\/x\.md:11:7 error TS2322/)
  })
})

describe("the docs", () => {
  const snippets = allSnippets(repoRoot, publishedPackages)

  it("have examples to check", () => {
    // README, the docs and the TSDoc all have some; a broken extractor would find none.
    expect(snippets.filter((s) => s.file === "README.md").length).toBeGreaterThan(0)
    expect(snippets.filter((s) => s.file.startsWith("docs/")).length).toBeGreaterThan(10)
    expect(snippets.filter((s) => s.file.startsWith("packages/")).length).toBeGreaterThan(3)
  })

  it("compile against the built packages", async () => {
    const errors = await compileSnippets(snippets)
    expect(errors, `examples that do not compile:\n${errors.join("\n")}`).toEqual([])
  })
})
