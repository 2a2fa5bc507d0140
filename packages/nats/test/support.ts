import { createServer, type Server, Socket } from "node:net"
// The same polling and naming helpers the conformance suite uses.
import { uniqueName, waitFor } from "@bus/conformance"
import type { BusError, MemoryOutbox } from "@bus/core"
import {
  type Envelope,
  outboxLayer,
  type RelayClaim,
  type RelayLog,
  type RelayOptions,
  type RelayServices,
  runRelay,
  type SendMeta,
  sendEach,
  Transport,
} from "@bus/core/adapter"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { Effect, Fiber, Layer, ManagedRuntime } from "effect"
import { natsTransport } from "../src/adapter.js"
import type { NatsTransportOptions } from "../src/index.js"

export { uniqueName, waitFor }

/**
 * A TCP proxy in front of a server, so a test can drop every client connection (as a
 * network failure would) while the server stays up: NATS 2.9 has no API to kick a client.
 */
export class TcpProxy {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #port = 0
  dropped = 0
  private constructor(
    readonly target: { readonly host: string; readonly port: number },
    server: Server,
  ) {
    this.#server = server
  }

  /** Starts a proxy on a free loopback port in front of `url` (`nats://host:port`). */
  static async start(url: string): Promise<TcpProxy> {
    const u = new URL(url)
    const target = { host: u.hostname, port: Number(u.port) }
    const server = createServer()
    const proxy = new TcpProxy(target, server)
    server.on("connection", (client) => proxy.#pipe(client))
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject)
      server.listen(0, "127.0.0.1", () => resolve())
    })
    const address = server.address()
    proxy.#port = typeof address === "object" && address !== null ? address.port : 0
    return proxy
  }

  /** The URL clients connect to. */
  get url(): string {
    return `nats://127.0.0.1:${this.#port}`
  }

  #pipe(client: Socket): void {
    const upstream = new Socket()
    // No Nagle: small protocol writes (an ack, then the next pull) must not wait ~40 ms
    // for the peer's delayed ACK, or the proxy itself would throttle delivery.
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    this.#sockets.add(client)
    this.#sockets.add(upstream)
    const close = () => {
      client.destroy()
      upstream.destroy()
      this.#sockets.delete(client)
      this.#sockets.delete(upstream)
    }
    client.on("error", close).on("close", close)
    upstream.on("error", close).on("close", close)
    upstream.connect(this.target.port, this.target.host, () => {
      client.pipe(upstream)
      upstream.pipe(client)
    })
  }

  /** Drops every proxied connection at once (both ends reset); resolves when they are gone. */
  async dropAll(): Promise<number> {
    const sockets = [...this.#sockets]
    for (const s of sockets) s.resetAndDestroy()
    this.dropped += sockets.length / 2
    await waitFor(() => sockets.every((s) => s.destroyed), 5_000, "proxied sockets to close")
    return sockets.length / 2
  }

  /** Stops listening and drops everything. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy()
    this.#sockets.clear()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }
}

/** A plain client connection for assertions and fault setup, closed by the caller. */
export const plainConnection = (servers: string | ReadonlyArray<string>): Promise<NatsConnection> =>
  connect({ servers: [servers].flat(), maxReconnectAttempts: -1, reconnectTimeWait: 200 })

/** Messages stored in `stream` under `subject`, and the ids they carry (one entry per message). */
export async function storedIds(
  nc: NatsConnection,
  stream: string,
  subject: string,
): Promise<{ readonly count: number; readonly ids: ReadonlyArray<string> }> {
  const jsm = await jetstreamManager(nc)
  const js = jsm.jetstream()
  const info = await jsm.streams.info(stream, { subjects_filter: subject })
  const count = info.state.subjects?.[subject] ?? 0
  if (count === 0) return { count, ids: [] }
  const consumer = await js.consumers.get(stream, { filter_subjects: subject })
  const ids: Array<string> = []
  const messages = await consumer.fetch({ max_messages: count, expires: 5_000 })
  for await (const m of messages) {
    ids.push((m.json() as Envelope).id)
    if (ids.length >= count) break
  }
  await consumer.delete().catch(() => {})
  return { count, ids }
}

/**
 * A relay that runs outside any bus, over `outbox`, that a test can kill in the middle
 * of a batch and start again. `killMidBatch(k)` waits for a page of more than `k` rows,
 * lets the relay send `k` of them, then freezes its next send (as a process that died
 * there would: the page's position is never stored, its partition lease stays until it
 * runs out), interrupts it, and starts a fresh relay, which takes the partition over once
 * the lease (`leaseMs`) has run out and re-sends those `k` rows.
 *
 * The core relay gives its partitions back when it is interrupted (a bus closing); a
 * killed process runs no finalizer, so everything the killed relay's owner would still
 * tell the store (a stored position, a lease renewal or release, a heartbeat) is dropped
 * here before it reaches the outbox, as in core's `instrumentedStore`.
 */
export class KillableRelay {
  readonly #runtime: ManagedRuntime.ManagedRuntime<RelayServices, BusError>
  readonly #options: RelayOptions
  #fiber: Fiber.Fiber<never, unknown> | undefined
  #armed: { readonly after: number; readonly resolve: () => void } | undefined
  /** The last non-empty page read and how many of its rows were sent since. */
  #batch = { read: 0, sent: 0 }
  #generation = 0
  readonly #dead = new Set<string>()
  readonly #sent = new Set<string>()
  /** Sends that reached the transport. */
  sends = 0
  /** Sends of an event id sent before (what the broker must drop). */
  resends = 0
  kills = 0

  constructor(outbox: MemoryOutbox, transport: NatsTransportOptions, options: RelayOptions = {}) {
    const self = this
    const hooked = Layer.effect(
      Transport,
      Effect.gen(function* () {
        const inner = yield* Transport
        // With the relay's outbox meta, as a real relay sends it: cursors carry the frontier.
        const send = (e: Envelope, meta?: SendMeta) =>
          self.#beforeSend(e).pipe(Effect.andThen(inner.send(e, meta)))
        return Transport.of({ ...inner, send, sendAll: sendEach(send) })
      }),
    ).pipe(Layer.provide(natsTransport(transport)))
    // A dead owner's calls succeed without reaching the store: it never learns it died.
    const alive = <A>(owner: string, effect: Effect.Effect<A, BusError>, dead: A) =>
      Effect.suspend(() => (self.#dead.has(owner) ? Effect.succeed(dead) : effect))
    const inner = outbox.store.relay
    const relay: RelayLog = {
      ...inner,
      claim: (partition, owner, leaseMs) =>
        alive(owner, inner.claim(partition, owner, leaseMs), undefined).pipe(
          Effect.map((claim) =>
            claim === undefined
              ? undefined
              : ({
                  ...claim,
                  commit: (state) => alive(owner, claim.commit(state), true),
                  renew: alive(owner, claim.renew, true),
                } satisfies RelayClaim),
          ),
        ),
      release: (partition, owner) => alive(owner, inner.release(partition, owner), undefined),
      heartbeat: (owner, leaseMs) => alive(owner, inner.heartbeat(owner, leaseMs), 1),
      // Empty pages (idle partitions, which the relay reads concurrently) leave the count of
      // the page being sent alone.
      read: (partition, after, limit, address) =>
        inner.read(partition, after, limit, address).pipe(
          Effect.tap((page) =>
            Effect.sync(() => {
              if (page.rows.length > 0) self.#batch = { read: page.rows.length, sent: 0 }
            }),
          ),
        ),
    }
    const store = outboxLayer({ ...outbox.store, relay })
    this.#runtime = ManagedRuntime.make(Layer.merge(hooked, store))
    this.#options = options
  }

  #beforeSend(e: Envelope): Effect.Effect<void> {
    return Effect.suspend(() => {
      const armed = this.#armed
      if (armed !== undefined && this.#batch.sent >= armed.after && this.#batch.read > armed.after) {
        this.#armed = undefined
        armed.resolve()
        return Effect.never
      }
      this.#batch.sent++
      this.sends++
      if (this.#sent.has(e.id)) this.resends++
      this.#sent.add(e.id)
      return Effect.void
    })
  }

  #owner(): string {
    return `killable-relay-${this.#generation}`
  }

  #run(): void {
    this.#fiber = this.#runtime.runFork(runRelay({ ...this.#options, owner: this.#owner() }))
  }

  /** Starts relaying. */
  async start(): Promise<void> {
    await this.#runtime.runPromise(Effect.void)
    this.#run()
  }

  /** Kills the relay after `after` sends of a batch of more rows, then starts a new one. */
  async killMidBatch(after = 3): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#armed = { after, resolve }
    })
    const fiber = this.#fiber
    this.#dead.add(this.#owner())
    if (fiber !== undefined) await this.#runtime.runPromise(Fiber.interrupt(fiber))
    this.kills++
    this.#generation++
    this.#run()
  }

  /** Stops the relay and its connection. */
  async stop(): Promise<void> {
    const fiber = this.#fiber
    this.#fiber = undefined
    if (fiber !== undefined) await this.#runtime.runPromise(Fiber.interrupt(fiber)).catch(() => {})
    await this.#runtime.dispose()
  }
}
