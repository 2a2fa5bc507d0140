import { createServer } from "node:net"
import { ServerStartError } from "../process/serverStartError.js"

const handedOut = new Set<number>()

/**
 * A loopback port nothing listens on right now. The port is released before the server binds it, so
 * another process can take it in between; `retryOnPortClash` covers that window.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const probe = createServer()
      probe.unref()
      probe.once("error", reject)
      probe.listen(0, "127.0.0.1", () => {
        const address = probe.address()
        probe.close(() => {
          if (address !== null && typeof address === "object") resolve(address.port)
          else reject(new Error("could not read the probe socket's port"))
        })
      })
    })
    // The kernel may hand the same ephemeral port out again soon; servers of one process never share.
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
}

/** `count` distinct free loopback ports. */
export async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = []
  for (let index = 0; index < count; index++) ports.push(await freePort())
  return ports
}

/** Runs a start attempt (which picks its own ports) again when it lost its port to another process. */
export async function retryOnPortClash<T>(attempt: () => Promise<T>, attempts = 3): Promise<T> {
  for (let round = 1; ; round++) {
    try {
      return await attempt()
    } catch (error) {
      if (!(error instanceof ServerStartError && error.portClash) || round >= attempts) throw error
    }
  }
}
