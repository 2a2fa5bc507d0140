/** Environment variable choosing how tests get their servers. */
export const SERVER_MODE_ENV = "BUS_TEST_SERVERS"

/** The values `BUS_TEST_SERVERS` accepts. */
export type TestServerMode = "local" | "containers" | "auto"

const MODES: readonly TestServerMode[] = ["local", "containers", "auto"]

/**
 * Resolves `BUS_TEST_SERVERS` (default `auto`) to the mode actually used. This build only runs
 * servers as local processes, so `auto` means `local`, and `containers` fails before anything
 * starts rather than half-working.
 *
 * @throws Error for `containers` or an unknown value.
 */
export function resolveServerMode(env: NodeJS.ProcessEnv = process.env): "local" {
  const raw = env[SERVER_MODE_ENV]?.trim() || "auto"
  if (!(MODES as readonly string[]).includes(raw)) {
    throw new Error(`${SERVER_MODE_ENV}=${raw} is not a valid value; use one of: ${MODES.join(", ")}`)
  }
  if (raw === "containers") {
    throw new Error(
      `${SERVER_MODE_ENV}=containers needs a Docker engine (testcontainers), and container mode is not ` +
        `available in this build. Use ${SERVER_MODE_ENV}=local (or auto, the default) to run the servers ` +
        "as local processes, or point BUS_PG_URL / BUS_REDIS_URL / BUS_NATS_URL at servers you run yourself.",
    )
  }
  return "local"
}
