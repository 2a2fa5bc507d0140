/**
 * What a user installs: each published package packed with `pnpm pack` (which rewrites the
 * workspace: protocol), checked by publint and Are the Types Wrong (ESM-only profile), then
 * installed from the tarballs into a throwaway CommonJS project and an ESM project, where a
 * TypeScript program with an interface-typed payload is compiled and run on the in-memory bus.
 *
 * The installs resolve `effect`, `pg` and the rest from pnpm's store (`--prefer-offline`), so
 * they are fast and only reach the registry for what the store lacks.
 */
import { execFile } from "node:child_process"
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { publint } from "publint"
import { formatMessage } from "publint/utils"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { typecheck } from "../src/compile.js"
import { publishedPackages, repoRoot } from "../src/workspace.js"

const run = promisify(execFile)
const require = createRequire(import.meta.url)
const attw = join(require.resolve("@arethetypeswrong/cli/package.json"), "..", "dist", "index.js")
const effectVersion: string = require("effect/package.json").version

const work = mkdtempSync(join(tmpdir(), "bus-package-tests-"))
afterAll(() => rmSync(work, { recursive: true, force: true }))

const tarballs = new Map<string, string>()
const manifests = new Map<string, Record<string, unknown>>()

beforeAll(async () => {
  const packs = join(work, "packs")
  mkdirSync(packs)
  for (const name of publishedPackages) {
    const dir = join(repoRoot, "packages", name)
    const before = new Set(readdirSync(packs))
    await run("pnpm", ["pack", "--pack-destination", packs], { cwd: dir, timeout: 120_000 })
    const file = readdirSync(packs).find((f) => !before.has(f))
    if (file === undefined) throw new Error(`pnpm pack wrote no tarball for packages/${name}`)
    tarballs.set(name, join(packs, file))
    const { stdout } = await run("tar", ["-xzOf", join(packs, file), "package/package.json"])
    manifests.set(name, JSON.parse(stdout))
  }
})

describe.each(publishedPackages)("the published @bus/%s", (name) => {
  it("passes publint", async () => {
    const tarball = readFileSync(tarballs.get(name) ?? "")
    const { messages, pkg } = await publint({
      pack: { tarball: tarball.buffer.slice(tarball.byteOffset, tarball.byteOffset + tarball.byteLength) },
      level: "suggestion",
      strict: true,
    })
    expect(messages.map((m) => `${m.type}: ${formatMessage(m, pkg)}`)).toEqual([])
  })

  it("passes Are the Types Wrong (ESM-only profile)", async () => {
    const result = await run(
      process.execPath,
      [attw, tarballs.get(name) ?? "", "--profile", "esm-only", "--format", "ascii", "--no-color"],
      { timeout: 120_000 },
    ).then(
      (r) => ({ code: 0, output: r.stdout }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({
        code: e.code ?? -1,
        output: `${e.stdout ?? ""}${e.stderr ?? ""}`,
      }),
    )
    expect(result.code, result.output).toBe(0)
  })

  it("has effect as a peer, never a dependency, and no workspace: ranges left", () => {
    const manifest = manifests.get(name) ?? {}
    const deps = (manifest.dependencies ?? {}) as Record<string, string>
    const peers = (manifest.peerDependencies ?? {}) as Record<string, string>
    expect(peers.effect).toBe("^4.1.0")
    expect(deps.effect).toBeUndefined()
    if (name !== "core" && name !== "cli") {
      expect(peers["@bus/core"]).toMatch(/^\^\d+\.\d+\.\d+/)
      expect(deps["@bus/core"]).toBeUndefined()
    }
    expect(JSON.stringify(manifest)).not.toContain("workspace:")
  })
})

describe("installed from the tarballs", () => {
  const consumers = ["commonjs", "module"] as const

  const project = async (type: (typeof consumers)[number]): Promise<string> => {
    const dir = join(work, type)
    mkdirSync(dir)
    const file = (name: string) => `file:${tarballs.get(name)}`
    writeFileSync(
      join(dir, "package.json"),
      JSON.stringify({
        name: `bus-consumer-${type}`,
        private: true,
        type,
        dependencies: {
          "@bus/core": file("core"),
          "@bus/postgres-notify": file("postgres-notify"),
          "@bus/sse": file("sse"),
          effect: effectVersion,
        },
      }),
    )
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2023",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          skipLibCheck: true,
          outDir: "dist",
          rootDir: ".",
        },
        files: ["order.ts"],
      }),
    )
    copyFileSync(join(import.meta.dirname, "fixtures", "consumer", "order.ts"), join(dir, "order.ts"))
    // Outside the workspace, so this is a user's own install. CI sets CI=true, which would make
    // pnpm insist on a lockfile these projects do not have.
    await run("pnpm", ["install", "--prefer-offline", "--no-frozen-lockfile", "--reporter", "silent"], {
      cwd: dir,
      timeout: 240_000,
    })
    return dir
  }

  it.each(consumers)(
    "a %s project compiles and runs a round trip with an interface payload and a typed channel",
    async (type) => {
      const dir = await project(type)
      expect(await typecheck(dir)).toBe("")
      const emitted = readFileSync(join(dir, "dist", "order.js"), "utf8")
      if (type === "commonjs") {
        // The emitted program really is CommonJS: Node's require() of the ESM packages.
        expect(emitted).toMatch(/require\("@bus\/core"\)/)
      } else {
        expect(emitted).toMatch(/from "@bus\/core"/)
      }
      const { stdout } = await run(process.execPath, [join(dir, "dist", "order.js")], {
        cwd: dir,
        timeout: 60_000,
      })
      // The program prints one JSON line; anything else the packages log goes beside it.
      const line = stdout.split("\n").find((l) => l.startsWith('{"type"'))
      expect(line, stdout).toBeDefined()
      expect(JSON.parse(line ?? "")).toEqual({
        type: "order.paid",
        data: { id: "o-1", total: 42.5 },
        refused: "InvalidEvent",
        adapters: ["function", "function"],
      })
    },
  )

  it("a plain require() of every library package and adapter entry works; internals are not exported", async () => {
    const dir = join(work, "commonjs")
    const script = [
      "@bus/core",
      "@bus/core/adapter",
      "@bus/postgres-notify",
      "@bus/postgres-notify/adapter",
      "@bus/sse",
    ]
      .map(
        (p) => `if (typeof require(${JSON.stringify(p)}) !== "object") throw new Error(${JSON.stringify(p)})`,
      )
      .join("\n")
    // A deep import is refused by the exports map, whatever file it names.
    const internal = `try { require("@bus/core/internal/names"); throw new Error("internal exported") } catch (e) { if (e.code !== "ERR_PACKAGE_PATH_NOT_EXPORTED") throw e }`
    const { stdout } = await run(process.execPath, ["-e", `${script}\n${internal}\nconsole.log("ok")`], {
      cwd: dir,
    })
    expect(stdout.trim()).toBe("ok")
  })
})
