import { redactUrl } from "../net/redactUrl.js"
import type { ServerHandle } from "./types.js"

/**
 * A handle for a server someone else runs (named by `envVar`). Stopping is a no-op, since the
 * server is not ours to stop; fault injection rejects, since it is not ours to break either.
 */
export function externalHandle(url: string, envVar: string): ServerHandle {
  const refuse = (operation: string) => (): Promise<void> =>
    Promise.reject(
      new Error(
        `cannot ${operation} the server at ${redactUrl(url)}: it is external (${envVar} is set), so this ` +
          `process does not control it. Unset ${envVar} to let the harness start a server it can ${operation}.`,
      ),
    )
  const stop = (): Promise<void> => Promise.resolve()
  return {
    url,
    controllable: false,
    pid: () => undefined,
    stop,
    restart: refuse("restart"),
    kill: refuse("kill"),
    pause: refuse("pause"),
    resume: refuse("resume"),
    [Symbol.asyncDispose]: stop,
  }
}
