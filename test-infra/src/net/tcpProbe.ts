import { connect } from "node:net"
import { redactUrl } from "./redactUrl.js"

/** Whether a TCP connection to host:port opens within `timeoutMs`. */
export function canConnect(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })
}

/**
 * Fails fast when an external server named by `envVar` does not accept connections, instead of
 * letting every test time out on its own. Checks the first host of a comma-separated list.
 */
export async function assertReachable(url: string, envVar: string, defaultPort: number): Promise<void> {
  const first = url.split(",")[0]?.trim() ?? ""
  let parsed: URL
  try {
    parsed = new URL(first.includes("://") ? first : `tcp://${first}`)
  } catch {
    throw new Error(`${envVar}=${redactUrl(url)} is not a valid URL`)
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1"
  const port = parsed.port === "" ? defaultPort : Number(parsed.port)
  if (!(await canConnect(host, port, 5_000))) {
    throw new Error(
      `${envVar}=${redactUrl(url)} is not reachable: nothing accepts connections on ${host}:${port}`,
    )
  }
}
