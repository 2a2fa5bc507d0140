import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { type Bus, createBus, type DeliveredEvent, type MemoryOutbox, memoryOutbox } from "@bus/core"
import { EventSource, type FetchLike } from "eventsource"
import type { SseSubscription, SubscribeFn } from "../src/index.js"

/** Polls `condition` every 5 ms until it holds; rejects after `timeoutMs`. */
export const waitFor = async (condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** An in-memory bus with a publish helper. */
export interface TestBus {
  readonly bus: Bus
  readonly outbox: MemoryOutbox
  /** Publishes one committed event with `data: { i, ...extra }`. */
  publish(channel: string, i: number, extra?: Record<string, string>): Promise<void>
  close(): Promise<void>
}

/** A fresh in-memory bus for tenant `acme`. */
export const startBus = async (): Promise<TestBus> => {
  const outbox = memoryOutbox()
  const bus = await createBus({
    outbox,
    env: false,
  })
  return {
    bus,
    outbox,
    publish: async (channel, i, extra = {}) => {
      await outbox.transaction((tx) =>
        bus.publish(tx, { tenant: "acme", channel, type: "test.event", data: { i, ...extra } }),
      )
    },
    close: () => bus.close(),
  }
}

/** A subscribe function over `bus` that counts what was opened and closed. */
export const tracked = (bus: Bus) => {
  const stats = { opened: 0, closed: 0, requests: [] as Array<{ channel: string; from: string | undefined }> }
  const subscribe: SubscribeFn = (options) => {
    stats.opened++
    stats.requests.push({ channel: options.channel, from: options.from })
    const inner = bus.subscribe(options)
    let closed = false
    const subscription: SseSubscription = {
      [Symbol.asyncIterator]: () => inner[Symbol.asyncIterator](),
      close: async () => {
        if (!closed) {
          closed = true
          stats.closed++
        }
        await inner.close()
      },
    }
    return subscription
  }
  return { subscribe, stats }
}

/** A Node http server on 127.0.0.1 with a random port. */
export interface TestServer {
  readonly url: string
  readonly server: Server
  /** Drops every open connection (clients then reconnect). */
  dropConnections(): void
  close(): Promise<void>
}

/** Serves `handler` on 127.0.0.1. */
export const serve = async (
  handler: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>,
): Promise<TestServer> => {
  const server = createServer((req, res) => void handler(req, res))
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    dropConnections: () => server.closeAllConnections(),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** A message received by {@link listen}. */
export interface Received {
  readonly lastEventId: string
  readonly event: DeliveredEvent
}

/** An `eventsource` client that records what it receives. */
export interface Listener {
  readonly source: EventSource
  readonly messages: Array<Received>
  readonly controls: Array<{ readonly type: string; readonly data: unknown }>
  /** Headers of every request the client made, in order (reconnects included). */
  readonly requests: Array<Record<string, string>>
  /** `data.i` of received events. */
  indices(): Array<number>
  close(): void
}

/**
 * Opens an `eventsource` client on `url`. `lastEventId` is sent as the `Last-Event-ID`
 * header on the first request (as a browser does on its automatic reconnect); `gate`
 * may hold back any request until it resolves.
 */
export const listen = (
  url: string,
  options: { readonly lastEventId?: string; readonly gate?: (attempt: number) => Promise<void> } = {},
): Listener => {
  const messages: Array<Received> = []
  const controls: Array<{ type: string; data: unknown }> = []
  const requests: Array<Record<string, string>> = []
  const fetchLike: FetchLike = async (input, init) => {
    const headers: Record<string, string> = { ...init.headers }
    if (requests.length === 0 && options.lastEventId !== undefined)
      headers["Last-Event-ID"] = options.lastEventId
    requests.push(headers)
    await options.gate?.(requests.length)
    return fetch(input, { ...init, headers })
  }
  const source = new EventSource(url, { fetch: fetchLike })
  source.onmessage = (e) => {
    messages.push({ lastEventId: e.lastEventId, event: JSON.parse(e.data) as DeliveredEvent })
  }
  for (const type of ["reset", "overflow"]) {
    source.addEventListener(type, (e) => {
      controls.push({ type, data: JSON.parse((e as MessageEvent).data) })
    })
  }
  return {
    source,
    messages,
    controls,
    requests,
    indices: () => messages.map((m) => (m.event.data as { i: number }).i),
    close: () => source.close(),
  }
}

/** A raw HTTP GET that keeps the status, headers and body text as they arrive. */
export interface RawResponse {
  status: number | undefined
  headers: Record<string, string | Array<string> | undefined>
  text: string
  ended: boolean
  close(): void
}

/** Opens a raw GET on `url` (for headers, comments and exact framing). */
export const rawGet = async (url: string, headers: Record<string, string> = {}): Promise<RawResponse> => {
  const controller = new AbortController()
  const out: RawResponse = {
    status: undefined,
    headers: {},
    text: "",
    ended: false,
    close: () => controller.abort(),
  }
  await new Promise<void>((resolve, reject) => {
    const req = request(url, { headers, signal: controller.signal }, (res) => {
      out.status = res.statusCode
      out.headers = res.headers
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        out.text += chunk
      })
      res.on("end", () => {
        out.ended = true
      })
      res.on("error", () => {
        out.ended = true
      })
      resolve()
    })
    req.on("error", (error) => {
      out.ended = true
      if (out.status === undefined) reject(error)
    })
    req.end()
  })
  return out
}

/** Frames of an event-stream text, each as its field lines. */
export const frames = (text: string): Array<Array<string>> =>
  text
    .split("\n\n")
    .filter((f) => f.length > 0)
    .map((f) => f.split("\n"))

/** Active handles of a kind (`Timeout`, `TCPSocketWrap`, …) in this process. */
export const activeCount = (kind: string): number =>
  process.getActiveResourcesInfo().filter((r) => r === kind).length
