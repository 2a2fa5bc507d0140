import type { DeliveredEvent } from "@bus/core"
import type { StartPosition } from "@bus/core/adapter"
import type { StreamPlan } from "./access.js"
import type { ResolvedSseOptions } from "./options.js"
import type { HeadFn, SseSubscription, SubscribeFn } from "./source.js"
import { encodeSseId } from "./sseId.js"
import { controlEvents, controlFrame, heartbeatFrame, positionFrame, retryFrame } from "./wire.js"

/**
 * One client's stream, independent of the HTTP library: subscribes to every channel of
 * the plan, writes frames to a {@link SseSink}, keeps a bounded buffer for a slow client,
 * sends heartbeats, and releases everything when either side ends.
 *
 * @module
 */

/** Where a session writes; each HTTP adapter provides one. */
export interface SseSink {
  /** Hands bytes to the client; `false` when the client is behind (the adapter calls `drain()` later). */
  write(chunk: Uint8Array): boolean
  /**
   * Hands several chunks over as one write (a corked socket: one system call, no copy of
   * the shared frames); `false` as for `write`. Without it, chunks are written one by one.
   */
  writeAll?(chunks: ReadonlyArray<Uint8Array>): boolean
  /** Ends the response after what was already written. */
  end(): void
  /** Drops the connection now, discarding what the client has not read. */
  destroy(): void
}

const encoder = new TextEncoder()
const heartbeatBytes = encoder.encode(heartbeatFrame)

/** Most bytes handed over in one write: frames beyond it go in the next write of the same flush. */
const maxWriteBytes = 64 * 1024

/**
 * Sessions with frames waiting for this process's next flush. Frames are not written to
 * the socket as each event is delivered but once per turn of the event loop, all of a
 * session's frames joined into one write: a socket write costs a system call (tens of µs
 * on loopback, more than the rest of a delivery), so a process that falls behind under
 * thousands of clients writes each client once per turn with everything due, instead of
 * once per event, and catches up instead of falling further behind. A process that keeps
 * up writes each frame in the turn it was delivered. One `setImmediate` serves every
 * session, after the deliveries of the current turn have run.
 */
const flushing = new Set<SseSession>()
let flushScheduled = false
const flushAll = (): void => {
  flushScheduled = false
  const sessions = [...flushing]
  flushing.clear()
  for (const session of sessions) session.drain()
}
const scheduleFlush = (session: SseSession): void => {
  flushing.add(session)
  if (!flushScheduled) {
    flushScheduled = true
    setImmediate(flushAll)
  }
}

const cursorInvalid = (
  u: unknown,
):
  | { readonly reason: "malformed" | "expired" | "foreign" | "address"; readonly message: string }
  | undefined => {
  const e = u as { _tag?: unknown; reason?: unknown; message?: unknown } | null
  if (typeof e !== "object" || e === null || e._tag !== "CursorInvalid") return undefined
  // "address": the Last-Event-ID was another stream's (another tenant or channel): the
  // client is told to start again rather than resumed at a position that skips events.
  const reason =
    e.reason === "expired" || e.reason === "foreign" || e.reason === "address" ? e.reason : "malformed"
  return { reason, message: String(e.message) }
}

/** A running SSE stream for one client. */
export class SseSession {
  /** Last position sent per channel; every `id:` encodes all of them. */
  readonly #positions = new Map<string, string>()
  readonly #subscriptions: Array<SseSubscription> = []
  #queue: Array<Uint8Array> = []
  #queuedBytes = 0
  #blocked = false
  #ended = false
  #phase: "open" | "ending" | "closed" = "open"
  #heartbeat: ReturnType<typeof setInterval> | undefined
  #grace: ReturnType<typeof setTimeout> | undefined
  #released: Promise<void> | undefined
  #resolveDone!: () => void
  /** Settles when the connection is gone and every subscription is closed. */
  readonly done = new Promise<void>((resolve) => {
    this.#resolveDone = resolve
  })

  #sink!: SseSink
  /** Start position per channel, or why the stream cannot start. */
  #starts: Array<readonly [string, StartPosition]> | { readonly failed: unknown } | undefined

  constructor(
    readonly plan: StreamPlan,
    private readonly subscribe: SubscribeFn,
    private readonly head: HeadFn | undefined,
    private readonly options: ResolvedSseOptions<never>,
  ) {}

  /**
   * Fixes where each channel starts, before the response begins: "now" then means "before
   * the client saw the stream open", so anything committed after that is delivered.
   * Never rejects; a failure is reported once the stream starts.
   */
  async prepare(): Promise<void> {
    const { plan, options } = this
    if ("reason" in plan.resume) return
    const resume = plan.resume
    try {
      this.#starts = await Promise.all(
        plan.channels.map(async (channel) => {
          const from = resume.get(channel) ?? options.from
          // "now" becomes a cursor, so an id can name this channel before its first event.
          if (from === "now" && this.head)
            return [channel, await this.head({ tenant: plan.tenant, channel })] as const
          return [channel, from] as const
        }),
      )
    } catch (error) {
      this.#starts = { failed: error }
    }
  }

  /** Writes the opening frames to `sink` and starts delivery; call once, after `prepare()` and the headers. */
  start(sink: SseSink): void {
    this.#sink = sink
    if (this.#phase !== "open") return
    this.#send(retryFrame(this.options.retryMs))
    this.#heartbeat = setInterval(() => {
      // A client that is behind does not need pings piling up behind its events.
      if (this.#phase === "open" && !this.#blocked && this.#queue.length === 0) {
        this.#blocked = !this.#sink.write(heartbeatBytes)
      }
    }, this.options.heartbeatMs)
    this.#subscribeAll()
  }

  /** The client can take more (or the process's flush came): write what waited, joined into few writes. */
  drain(): void {
    if (this.#phase === "closed") return
    this.#blocked = false
    while (this.#queue.length > 0 && !this.#blocked) {
      let end = 0
      let bytes = 0
      do bytes += this.#queue[end++]!.byteLength
      while (end < this.#queue.length && bytes + this.#queue[end]!.byteLength <= maxWriteBytes)
      // Out of the queue before the write: a sink may call back into `drain` from `write`
      // (a web stream pulls as soon as its reader takes the chunk).
      const chunks = this.#queue.splice(0, end)
      this.#queuedBytes -= bytes
      this.#blocked = !this.#writeAll(chunks)
    }
    if (this.#phase === "ending" && this.#queue.length === 0) this.#end()
  }

  /** The shared frames themselves, never copied: one corked write where the sink can, else one write each. */
  #writeAll(chunks: ReadonlyArray<Uint8Array>): boolean {
    if (chunks.length === 1) return this.#sink.write(chunks[0]!)
    if (this.#sink.writeAll !== undefined) return this.#sink.writeAll(chunks)
    let ok = true
    for (const chunk of chunks) ok = this.#sink.write(chunk)
    return ok
  }

  /** The connection is gone (client left, or our end completed): release everything. */
  disconnected(): Promise<void> {
    if (this.#phase !== "closed") {
      this.#phase = "closed"
      this.#queue = []
      this.#queuedBytes = 0
      clearTimeout(this.#grace)
      void this.#release().then(this.#resolveDone)
    }
    return this.done
  }

  #subscribeAll(): void {
    const { plan } = this
    if ("reason" in plan.resume) {
      this.#reset({ ...plan.resume })
      return
    }
    const starts = this.#starts ?? { failed: new Error("@bus/sse: SseSession.start() before prepare()") }
    if ("failed" in starts) {
      this.#fail(starts.failed)
      return
    }
    for (const [channel, from] of starts) if (from !== "now") this.#positions.set(channel, from)
    const id = encodeSseId(this.#positions, plan.channels.length)
    if (id !== undefined) this.#send(positionFrame(id))
    for (const [channel, from] of starts) {
      let subscription: SseSubscription
      try {
        subscription = this.subscribe({ tenant: plan.tenant, channel, from })
      } catch (error) {
        this.#fail(error)
        return
      }
      this.#subscriptions.push(subscription)
      void this.#pump(channel, subscription)
    }
  }

  async #pump(channel: string, subscription: SseSubscription): Promise<void> {
    const events = subscription[Symbol.asyncIterator]()
    try {
      for (;;) {
        const next = await events.next()
        if (this.#phase !== "open") return
        // The subscription ended by itself (the bus is closing): end the stream; the client resumes elsewhere.
        if (next.done) {
          this.#finish()
          return
        }
        this.#deliver(channel, next.value)
      }
    } catch (error) {
      if (this.#phase !== "open") return
      const invalid = cursorInvalid(error)
      if (invalid) this.#reset({ ...invalid, channel })
      else this.#fail(error)
    }
  }

  #deliver(channel: string, event: DeliveredEvent): void {
    this.#positions.set(channel, event.cursor)
    const channels = this.plan.channels.length
    let frame: Uint8Array | undefined
    try {
      // The event's bytes are encoded once per endpoint and shared by every client: on a
      // single-channel stream the whole frame, otherwise all but the composite `id:` line.
      if (channels === 1) frame = this.options.frames.single(event)
      frame ??= this.options.frames.withId(encodeSseId(this.#positions, channels), event)
    } catch (error) {
      this.#fail(error)
      return
    }
    this.#sendBytes(frame)
    // Only a client that is behind (its socket refused more) can overflow: frames waiting
    // for the process's next flush are not a slow client's.
    if (
      this.#blocked &&
      (this.#queue.length > this.options.maxBufferedEvents ||
        this.#queuedBytes > this.options.maxBufferedBytes)
    ) {
      this.#overflow()
    }
  }

  #send(frame: string): void {
    this.#sendBytes(encoder.encode(frame))
  }

  #sendBytes(chunk: Uint8Array): void {
    // Frames keep their order: everything goes through the queue, written at the process's
    // next flush (or, for a client that is behind, when its socket drains).
    this.#queue.push(chunk)
    this.#queuedBytes += chunk.byteLength
    if (!this.#blocked) scheduleFlush(this)
  }

  /** The stream cannot resume from the client's cursor: say so explicitly, then end. */
  #reset(body: { readonly reason: string; readonly message: string; readonly channel?: string }): void {
    this.#send(controlFrame(controlEvents.reset, body, true))
    this.#finish()
  }

  /**
   * The client fell too far behind. What waits for it is dropped (it resumes by cursor from
   * the last event it actually read), so one slow reader costs bounded memory and never
   * holds the bus back.
   */
  #overflow(): void {
    this.#queue = []
    this.#queuedBytes = 0
    this.#sink.write(
      encoder.encode(
        controlFrame(controlEvents.overflow, {
          message: "the client fell behind; reconnect to resume from the last event received",
        }),
      ),
    )
    this.options.onOverflow?.({ tenant: this.plan.tenant, channels: this.plan.channels })
    this.#finish()
  }

  #fail(error: unknown): void {
    if (this.#phase !== "open") return
    this.options.onError?.(error)
    this.#finish()
  }

  /** Ends the stream from our side, after what is queued, within the grace period. */
  #finish(): void {
    if (this.#phase !== "open") return
    this.#phase = "ending"
    void this.#release()
    this.#grace = setTimeout(() => this.#sink.destroy(), this.options.closeGraceMs)
    if (this.#queue.length === 0) this.#end()
  }

  #end(): void {
    if (this.#ended) return
    this.#ended = true
    this.#sink.end()
  }

  /** Stops the heartbeat and closes every subscription, once. */
  #release(): Promise<void> {
    this.#released ??= (async () => {
      clearInterval(this.#heartbeat)
      const closing = this.#subscriptions.splice(0).map(async (s) => s.close())
      const results = await Promise.allSettled(closing)
      for (const r of results) if (r.status === "rejected") this.options.onError?.(r.reason)
    })()
    return this.#released
  }
}
