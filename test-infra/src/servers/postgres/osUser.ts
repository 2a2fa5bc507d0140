import { execFile } from "node:child_process"
import { promisify } from "node:util"
import { MissingBinaryError } from "../../process/findExecutable.js"
import type { OsUser } from "../../process/osUser.js"

const run = promisify(execFile)

/** Environment variable overriding the name of the OS account Postgres runs as when we are root. */
export const PG_OS_USER_ENV = "BUS_PG_OS_USER"
const DEFAULT_USER = "bus-postgres"

let cached: Promise<OsUser | undefined> | undefined

/**
 * The account to run Postgres as. Postgres refuses to start as root, so as root we run it as a
 * dedicated system account, created on first use; as anyone else it runs as the current user.
 */
export function postgresOsUser(): Promise<OsUser | undefined> {
  if (process.getuid?.() !== 0) return Promise.resolve(undefined)
  cached ??= ensureUser(process.env[PG_OS_USER_ENV] || DEFAULT_USER).catch((error: unknown) => {
    cached = undefined
    throw error
  })
  return cached
}

async function ensureUser(name: string): Promise<OsUser> {
  const existing = await lookup(name)
  if (existing !== undefined) return existing
  // Parallel test workers may race to create the account: "already exists" (9) means someone won,
  // and a locked /etc/passwd (10) clears once they are done.
  for (let attempt = 1; ; attempt++) {
    try {
      await run("useradd", [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "Postgres servers started by @bus/test-infra",
        name,
      ])
      break
    } catch (error) {
      // execFile reports a missing program as code "ENOENT" and an exit status as a numeric code.
      const failure = error as Error & { code?: unknown; stderr?: string }
      if (failure.code === "ENOENT") {
        throw new MissingBinaryError(
          `useradd not found on PATH: apt-get install -y passwd (needed to create the '${name}' account, ` +
            `because Postgres does not run as root); or create the account yourself and set ${PG_OS_USER_ENV}`,
        )
      }
      if (failure.code === 9) break
      if (failure.code !== 10 || attempt >= 20) {
        throw new Error(
          `could not create the OS user '${name}' for Postgres: ${failure.stderr ?? failure.message}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt))
    }
  }
  const created = await lookup(name)
  if (created === undefined) throw new Error(`OS user '${name}' for Postgres still missing after useradd`)
  return created
}

async function lookup(name: string): Promise<OsUser | undefined> {
  try {
    const [uid, gid] = await Promise.all([run("id", ["-u", name]), run("id", ["-g", name])])
    return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) }
  } catch {
    return undefined
  }
}
