import { connect } from "node:net"

/**
 * True when Redis answers PING with PONG within `timeoutMs`. While it replays its append-only file
 * it answers -LOADING instead, which counts as not ready.
 */
export function redisAnswersPing(port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port })
    let reply = ""
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.on("data", (chunk) => {
      reply += chunk.toString("latin1")
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG"))
    })
  })
}
