/**
 * Issue 14's layout rules on the repository: one file-naming style, no import cycles between
 * folders, and the tree in the layout `scripts/rename-layout.mjs` describes (so a file merged
 * later under an old name or in a dissolved folder is caught here, not by a reader).
 * The rules are first run on a small tree built to break them, so a pass on the repo means
 * something.
 */
import { execFile } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { promisify } from "node:util"
import { afterAll, describe, expect, it } from "vitest"
import { folderCycles, packageDirs, styleViolations } from "../src/layout.js"
import { repoRoot } from "../src/workspace.js"

const run = promisify(execFile)

describe("the layout rules catch what they are for", () => {
  const root = mkdtempSync(join(tmpdir(), "bus-layout-"))
  afterAll(() => rmSync(root, { recursive: true, force: true }))
  const write = (path: string, text = "export {}\n") => {
    mkdirSync(dirname(join(root, path)), { recursive: true })
    writeFileSync(join(root, path), text)
  }
  // Specifiers are built from `up` and `here` so that they are not relative paths in this
  // file's own source: scripts/rename-layout.mjs would take them for imports of this file.
  const up = "../"
  const here = "./"
  write("packages/demo/package.json", "{}")
  // listener/ and outbox/ import each other (the cycle issue 14 found in postgres-notify)
  write("packages/demo/src/listener/wakeUps.ts", `import { append } from "${up}outbox/append.js"\n`)
  write("packages/demo/src/outbox/append.ts", `export { append } from "${here}queries.js"\n`)
  write("packages/demo/src/outbox/queries.ts", `import type { Health } from "${up}listener/health.js"\n`)
  write("packages/demo/src/listener/health.ts")
  // a root file both ways is fine only one way round: errors.ts <- sql/ <- store.ts
  write("packages/demo/src/errors.ts")
  write("packages/demo/src/sql/executor.ts", `import { x } from "${up}errors.js"\n`)
  write(
    "packages/demo/src/store.ts",
    `import { y } from "${here}sql/executor.js"\nimport "${here}errors.js"\n`,
  )
  // names breaking the style, and names that are not ours
  write("packages/demo/src/NatsTransport.ts")
  write("packages/demo/src/outbox-transport/feed.ts")
  write("packages/demo/test/all-tenants.test.ts")
  write("packages/demo/test/allTenants.test.ts")
  write("packages/demo/test/fixtures/doc-context.d.ts")
  write("packages/demo/test/prisma/generated/models/Order.ts")

  it("finds the folder cycle, with the imports that close it, and only that one", () => {
    expect(packageDirs(root)).toEqual([join(root, "packages", "demo")])
    expect(folderCycles(join(root, "packages/demo/src"))).toEqual([
      ["listener/wakeUps.ts -> outbox/append.ts", "outbox/queries.ts -> listener/health.ts"],
    ])
  })

  it("finds a root file in a cycle with a folder", () => {
    write("packages/demo/src/errors.ts", `import { store } from "${here}store.js"\n`)
    expect(folderCycles(join(root, "packages/demo/src"))).toContainEqual([
      "errors.ts -> store.ts",
      "sql/executor.ts -> errors.ts",
      "store.ts -> errors.ts",
      "store.ts -> sql/executor.ts",
    ])
    write("packages/demo/src/errors.ts")
  })

  it("finds files and folders that break the style", () => {
    expect(styleViolations(root)).toEqual([
      "packages/demo/src/NatsTransport.ts",
      "packages/demo/src/outbox-transport/",
      "packages/demo/test/all-tenants.test.ts",
    ])
  })
})

describe("the repository", () => {
  it("names every source file and folder in one style (camelCase)", () => {
    expect(styleViolations(repoRoot)).toEqual([])
  })

  it("has no import cycles between the folders of any package", () => {
    const dirs = packageDirs(repoRoot)
    expect(dirs.length).toBeGreaterThanOrEqual(10)
    const cycles = Object.fromEntries(
      dirs
        .map((d) => [d.slice(repoRoot.length + 1), folderCycles(join(d, "src"))] as const)
        .filter(([, c]) => c.length > 0),
    )
    expect(cycles).toEqual({})
  })

  it("is in the layout scripts/rename-layout.mjs describes", async () => {
    const { stdout } = await run(process.execPath, ["scripts/rename-layout.mjs", "--check"], {
      cwd: repoRoot,
    })
    expect(stdout).toContain("nothing to do")
  })
})
