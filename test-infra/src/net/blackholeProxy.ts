import net from "node:net"

/**
 * A TCP proxy on a free loopback port in front of a real server, for the faults the
 * server itself cannot produce: a NAT or load balancer between the app and the server
 * that stops forwarding without closing anything (`blackhole`), and one that drops every
 * connection at once (`reset`). The app connects to `port` instead of the server's.
 *
 * While blackholed the proxy still reads both sockets (so neither side sees a full send
 * buffer, as with a NAT that silently drops packets the kernel already acknowledged) but
 * forwards nothing, FIN and RST included: every socket stays open and silent, which is
 * exactly the half-open connection that TCP alone never notices. New connections are
 * accepted and then hang the same way, as a connection attempt to a dropped route does.
 *
 * @module
 */

/** Options of {@link startBlackholeProxy}. */
export interface BlackholeProxyOptions {
  /** The server's port. */
  readonly targetPort: number
  /** The server's host (default `127.0.0.1`). */
  readonly targetHost?: string
}

/** A running proxy. */
export interface BlackholeProxy {
  /** The port to connect to instead of the server's. */
  readonly port: number
  /** `127.0.0.1` */
  readonly host: string
  /** Stops forwarding in both directions, closing nothing. Idempotent. */
  readonly blackhole: () => void
  /**
   * Forwards again (bytes dropped meanwhile stay lost, as on a real network). A connection
   * one side closed during the blackhole is closed on the other side now. Idempotent.
   */
  readonly restore: () => void
  /** Destroys every proxied connection (both sides see a reset); later connections work. */
  readonly reset: () => void
  /** True while blackholed. */
  readonly blackholed: () => boolean
  /** Connections open now (client side). */
  readonly connections: () => number
  /** Connections accepted so far. */
  readonly accepted: () => number
  /** Destroys every connection and stops listening. Idempotent. */
  readonly close: () => Promise<void>
}

/** Replaces `host:port` of a `postgres://`, `redis://` or `nats://` URL with the proxy's. */
export const viaProxy = (url: string, proxy: Pick<BlackholeProxy, "host" | "port">): string => {
  const u = new URL(url)
  u.hostname = proxy.host
  u.port = String(proxy.port)
  return u.toString()
}

/** Starts a proxy to `targetHost:targetPort` on a free loopback port. */
export const startBlackholeProxy = async (options: BlackholeProxyOptions): Promise<BlackholeProxy> => {
  const targetHost = options.targetHost ?? "127.0.0.1"
  interface Pair {
    readonly client: net.Socket
    readonly upstream: net.Socket
    // One side ended or closed while blackholed: the other side was not told.
    orphaned: boolean
  }
  const pairs = new Set<Pair>()
  let dropping = false
  let accepted = 0

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    accepted++
    const upstream = net.connect({ host: targetHost, port: options.targetPort, allowHalfOpen: true })
    const pair: Pair = { client, upstream, orphaned: false }
    pairs.add(pair)
    const destroy = () => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    // A socket error or close on either side is forwarded as a close of the other, unless
    // blackholed: then the other side must not learn anything.
    const forward = (from: net.Socket, to: net.Socket) => {
      from.on("data", (chunk: Buffer) => {
        if (!dropping && !to.destroyed) to.write(chunk)
      })
      from.on("end", () => {
        if (dropping) pair.orphaned = true
        else if (!to.destroyed) to.end()
      })
      from.on("error", () => {})
      from.on("close", () => {
        if (dropping) pair.orphaned = true
        else destroy()
      })
    }
    forward(client, upstream)
    forward(upstream, client)
  })
  server.on("error", () => {})
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject)
      resolve()
    })
  })
  const address = server.address()
  if (address === null || typeof address === "string") throw new Error("proxy has no TCP address")

  const resetAll = () => {
    for (const { client, upstream } of [...pairs]) {
      // resetAndDestroy sends an RST, as a middlebox that forgot the flow answers.
      client.resetAndDestroy()
      upstream.destroy()
    }
    pairs.clear()
  }

  let closing: Promise<void> | undefined
  return {
    port: address.port,
    host: "127.0.0.1",
    blackhole: () => {
      dropping = true
    },
    restore: () => {
      dropping = false
      // Once packets flow again, the side that is still open learns (by its next write
      // or keepalive) that the other one is gone; the proxy tells it at once.
      for (const pair of [...pairs]) {
        if (pair.orphaned) {
          pairs.delete(pair)
          pair.client.destroy()
          pair.upstream.destroy()
        }
      }
    },
    reset: resetAll,
    blackholed: () => dropping,
    connections: () => pairs.size,
    accepted: () => accepted,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        resetAll()
        server.close(() => resolve())
      })
      return closing
    },
  }
}
