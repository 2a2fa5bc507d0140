import { connect } from "node:net"

/** A reply of the Redis protocol (RESP2): strings, integers, nested arrays, null; errors reject. */
export type RedisReply = string | number | null | RedisReply[]

/** An error reply (`-ERR …`) of the server. */
export class RedisReplyError extends Error {
  override readonly name = "RedisReplyError"
}

/**
 * Sends one command to the Redis server on 127.0.0.1:`port` over a fresh connection and resolves
 * with its reply. The harness needs a handful of admin commands (CLUSTER MEET, CLUSTER NODES, …)
 * and does not depend on a client library for them. Bounded by `timeoutMs`: a paused or dead
 * server rejects instead of hanging the caller.
 */
export function redisCommand(port: number, args: readonly string[], timeoutMs = 2_000): Promise<RedisReply> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port })
    let buffer = Buffer.alloc(0)
    let settled = false
    const done = (error: Error | undefined, reply?: RedisReply) => {
      if (settled) return
      settled = true
      socket.destroy()
      if (error) reject(error)
      else resolve(reply ?? null)
    }
    socket.setTimeout(timeoutMs, () =>
      done(new Error(`redis on port ${port}: no reply to ${args[0]} within ${timeoutMs}ms`)),
    )
    socket.once("error", (error) => done(error))
    socket.once("close", () => done(new Error(`redis on port ${port}: connection closed before a reply`)))
    socket.once("connect", () => {
      let out = `*${args.length}\r\n`
      for (const arg of args) out += `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`
      socket.write(out)
    })
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk])
      const parsed = parseReply(buffer, 0)
      if (parsed === undefined) return
      if (parsed.value instanceof RedisReplyError) done(parsed.value)
      else done(undefined, parsed.value)
    })
  })
}

type Parsed = { readonly value: RedisReply | RedisReplyError; readonly end: number }

/** One reply starting at `at`, or undefined while it is incomplete. */
function parseReply(buffer: Buffer, at: number): Parsed | undefined {
  const lineEnd = buffer.indexOf("\r\n", at)
  if (lineEnd < 0) return undefined
  const type = String.fromCharCode(buffer[at] ?? 0)
  const line = buffer.toString("utf8", at + 1, lineEnd)
  const next = lineEnd + 2
  switch (type) {
    case "+":
      return { value: line, end: next }
    case "-":
      return { value: new RedisReplyError(line), end: next }
    case ":":
      return { value: Number(line), end: next }
    case "$": {
      const length = Number(line)
      if (length < 0) return { value: null, end: next }
      if (buffer.length < next + length + 2) return undefined
      return { value: buffer.toString("utf8", next, next + length), end: next + length + 2 }
    }
    case "*": {
      const count = Number(line)
      if (count < 0) return { value: null, end: next }
      const items: RedisReply[] = []
      let position = next
      for (let index = 0; index < count; index++) {
        const item = parseReply(buffer, position)
        if (item === undefined) return undefined
        if (item.value instanceof RedisReplyError) return item
        items.push(item.value)
        position = item.end
      }
      return { value: items, end: position }
    }
    default:
      return { value: new RedisReplyError(`unexpected reply type ${JSON.stringify(type)}`), end: next }
  }
}
