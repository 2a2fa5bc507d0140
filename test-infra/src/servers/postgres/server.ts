import { randomBytes } from "node:crypto"
import { chownSync, mkdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { freePort, retryOnPortClash } from "../../net/freePort.js"
import { assertReachable } from "../../net/tcpProbe.js"
import type { OsUser } from "../../process/osUser.js"
import { runToCompletion } from "../../process/runToCompletion.js"
import { ServerProcess } from "../../process/serverProcess.js"
import { createTempDir, removeTempDir } from "../../process/tempDir.js"
import { controllableHandle } from "../controllableHandle.js"
import { externalHandle } from "../externalHandle.js"
import { resolveServerMode } from "../serverMode.js"
import type { PostgresHandle, StartPostgresOptions } from "../types.js"
import { createDatabase, postgresAnswers, terminateConnections } from "./admin.js"
import { postgresBinaries } from "./binaries.js"
import { postgresOsUser } from "./osUser.js"

/** Environment variable pointing tests at an existing Postgres instead of starting one. */
export const PG_URL_ENV = "BUS_PG_URL"

const SUPERUSER = "bus"
const DEFAULT_DATABASE = "bus_test"

/**
 * Settings for a disposable test server. fsync and full-page writes only protect against a crash of
 * the machine, which is not a test scenario; a crash of the server process is, and with these off
 * it still loses no committed row. synchronous_commit stays on for exactly that reason: off, a
 * SIGKILL would drop the last commits. max_connections leaves room for fan-out tests.
 */
const SETTINGS: Readonly<Record<string, string>> = {
  listen_addresses: "127.0.0.1",
  max_connections: "250",
  fsync: "off",
  full_page_writes: "off",
  shared_buffers: "64MB",
  log_line_prefix: "%m [%p] %q%a ",
}

/**
 * Starts a throwaway Postgres on a free loopback port with a superuser `bus`, or returns a
 * non-controllable handle for `BUS_PG_URL` when that is set.
 *
 * @throws MissingBinaryError when the chosen binaries are not installed.
 * @throws ServerStartError (with the server's log tail) when it does not come up.
 */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresHandle> {
  resolveServerMode()
  const external = process.env[PG_URL_ENV]
  if (external) {
    await assertReachable(external, PG_URL_ENV, 5432)
    return {
      ...externalHandle(external, PG_URL_ENV),
      terminateConnections: (filter) => terminateConnections(external, filter),
    }
  }
  const runAs = await postgresOsUser()
  const binaries = await postgresBinaries(options.binaries ?? "embedded", runAs)
  const database = options.database ?? DEFAULT_DATABASE
  const dir = createTempDir("postgres")
  try {
    const dataDir = join(dir, "data")
    const socketDir = join(dir, "socket")
    const logFile = join(dir, "postgres.log")
    const password = randomBytes(16).toString("hex")
    prepareDirectory(dir, socketDir, runAs)
    await initdb(binaries.initdb, dir, dataDir, password, runAs)
    const env = serverEnv()
    const { server, port } = await retryOnPortClash(async () => {
      const port = await freePort()
      const server = new ServerProcess({
        label: `postgres on 127.0.0.1:${port} (${dataDir})`,
        command: binaries.postgres,
        args: [
          "-D",
          dataDir,
          "-p",
          String(port),
          "-k",
          socketDir,
          ...Object.entries({ ...SETTINGS, ...options.settings }).flatMap(([name, value]) => [
            "-c",
            `${name}=${value}`,
          ]),
        ],
        env,
        runAs,
        logFile,
        // SIGINT is Postgres' "fast" shutdown: clients are cut off, no waiting for them to leave.
        stopSignal: "SIGINT",
        isReady: () => postgresAnswers(urlFor(password, port, "postgres")),
      })
      await server.start()
      return { server, port }
    })
    const url = urlFor(password, port, database)
    try {
      if (database !== "postgres") await createDatabase(urlFor(password, port, "postgres"), database)
    } catch (error) {
      await server.kill()
      throw error
    }
    return {
      ...controllableHandle(url, server, dir),
      terminateConnections: (filter) => terminateConnections(url, filter),
    }
  } catch (error) {
    await removeTempDir(dir)
    throw error
  }
}

function urlFor(password: string, port: number, database: string): string {
  return `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/${encodeURIComponent(database)}`
}

/** The server account needs to own everything it writes: data, socket, log. */
function prepareDirectory(dir: string, socketDir: string, runAs: OsUser | undefined): void {
  mkdirSync(socketDir)
  writeFileSync(join(dir, "postgres.log"), "")
  if (runAs === undefined) return
  for (const path of [dir, socketDir, join(dir, "postgres.log")]) chownSync(path, runAs.uid, runAs.gid)
}

async function initdb(
  initdbPath: string,
  dir: string,
  dataDir: string,
  password: string,
  runAs: OsUser | undefined,
): Promise<void> {
  const passwordFile = join(dir, "pwfile")
  writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 })
  if (runAs !== undefined) chownSync(passwordFile, runAs.uid, runAs.gid)
  try {
    await runToCompletion(
      initdbPath,
      [
        `--pgdata=${dataDir}`,
        `--username=${SUPERUSER}`,
        `--pwfile=${passwordFile}`,
        // Passwords over TCP, as applications connect; the socket stays open for local debugging.
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "--encoding=UTF8",
        "--locale=C",
        // The data directory is thrown away after the test; syncing it to disk buys nothing.
        "--no-sync",
      ],
      { logFile: join(dir, "initdb.log"), runAs, env: serverEnv() },
    )
  } finally {
    rmSync(passwordFile, { force: true })
  }
}

/** English messages whatever the machine's locale, and no PG* variables steering the server. */
function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith("PG") && !name.startsWith("LC_")) env[name] = value
  }
  return { ...env, LANG: "C", LC_ALL: "C" }
}
