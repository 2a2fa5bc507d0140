import type { AnyChannel, StandardSchemaV1 } from "@bus/core/adapter"
import { EventStreamParser } from "./parse.js"
import { defaultStorage, type ResumeStorage, streamKey } from "./storage.js"

/**
 * `followStream`: a browser (or any `fetch` runtime) client of an `@bus/sse` endpoint.
 *
 * It reads the stream with `fetch`, not `EventSource`, because `EventSource` cannot send
 * headers: an `Authorization: Bearer …` token would otherwise have to travel in the URL
 * (and in every proxy's access log). Around the read it does what every application
 * otherwise writes by hand, and usually gets wrong:
 *
 * - **Resume id per stream.** The last event id is kept in storage under a key of the
 *   endpoint and its channels, and sent as `Last-Event-ID` on every (re)connect, so a
 *   reload, a network drop or a server restart resumes with no gap and no duplicate.
 * - **`reset`.** The server cannot resume from the stored id (older than retention, another
 *   epoch, another stream's id): the id is forgotten, `onReset` tells the application to
 *   reload its state, and the stream continues from now. Never a silent skip.
 * - **`overflow`.** The client fell behind and the server dropped it: reconnect at once from
 *   the stored id (nothing is lost; the server buffered nothing for it).
 * - **Reconnects** after errors with exponential backoff and full jitter (at least the
 *   server's `retry:`), so a restarted server is not met by every client at once.
 *
 * @module
 */

/** An event as `@bus/sse` sends it. `Data` is what the application declares; it is not checked here. */
export interface BusEvent<Type extends string = string, Data = unknown> {
  readonly id: string
  readonly tenant: string
  readonly channel: string
  readonly type: Type
  readonly data: Data
  readonly headers: Readonly<Record<string, string>>
  /** ISO-8601 time the event was published. */
  readonly time: string
}

/** The events of a stream whose types map to payloads: `{ "order.paid": { orderId: number } }`. */
export type EventOf<Types extends Record<string, unknown>> = {
  [T in keyof Types & string]: BusEvent<T, Types[T]>
}[keyof Types & string]

/**
 * The events of a typed channel as the client delivers them: a union discriminated by `type`,
 * `data` in its schema's output form (for a channel given by name, untyped).
 */
export type ChannelEventOf<C> = C extends AnyChannel
  ? {
      readonly [T in keyof C["events"] & string]: BusEvent<
        T,
        StandardSchemaV1.InferOutput<C["events"][T]>
      > & {
        readonly channel: C["name"]
      }
    }[keyof C["events"] & string]
  : BusEvent<string, unknown>

/** Where a stream is: shown to users as "live", "reconnecting…". */
export type StreamStatus =
  | { readonly state: "connecting"; readonly attempt: number }
  | { readonly state: "open" }
  | {
      readonly state: "retrying"
      readonly attempt: number
      readonly inMs: number
      /** Why: a network error, or the HTTP status the endpoint answered with (401, 503, …). */
      readonly reason: string
      readonly httpStatus?: number
    }
  | { readonly state: "closed" }

/** The body of a `reset`: why the stream could not resume (`expired`, `foreign`, `address`, …). */
export interface ResetInfo {
  readonly reason: string
  readonly message: string
  readonly channel?: string
}

export interface FollowStreamOptions {
  /** The endpoint, e.g. `/events` (relative to the page). */
  readonly url: string
  /**
   * The channels to follow (sent as `channel` query parameters; the server's `authorize`
   * decides): names, or typed channels from `defineChannel` (`@bus/core`), whose events
   * are then typed and checked here against their schemas (see `onInvalid`).
   */
  readonly channels: ReadonlyArray<string | AnyChannel>
  /** Headers of every (re)connect, e.g. `() => ({ Authorization: \`Bearer ${token()}\` })`; called again on each one, so a refreshed token is used. */
  readonly headers?:
    | Readonly<Record<string, string>>
    | (() => Readonly<Record<string, string>> | Promise<Readonly<Record<string, string>>>)
  /** Where the resume id lives (default `localStorage`, or memory where there is none). */
  readonly storage?: ResumeStorage
  /** Its key in `storage` (default: from the endpoint and the channels). */
  readonly key?: string
  /** First reconnect delay (default 1 s), doubling per failed attempt up to `maxRetryMs` (default 30 s), fully jittered. */
  readonly initialRetryMs?: number
  readonly maxRetryMs?: number
  /** Stops the stream when aborted (as `close()` does). */
  readonly signal?: AbortSignal
  /** The `fetch` to use (default the global one). */
  readonly fetch?: typeof fetch
  /** `fetch` credentials mode (default `same-origin`, so cookies of the page's origin go along). */
  readonly credentials?: "omit" | "same-origin" | "include"
}

export interface StreamHandlers<Types extends Record<string, unknown>, Event = EventOf<Types>> {
  /** Every event, in order, once (a reconnect resumes after the last one handled). */
  readonly onEvent: (event: Event) => void
  /**
   * An event of a typed channel failed its schema: it is not given to `onEvent`, and the
   * stream goes on past it. Default: `console.warn` with the event's id and the issues.
   */
  readonly onInvalid?: (event: BusEvent, issues: ReadonlyArray<StandardSchemaV1.Issue>) => void
  /** The stream restarted from now: reload the state the events were applied to. */
  readonly onReset?: (info: ResetInfo) => void
  readonly onStatus?: (status: StreamStatus) => void
}

export interface BusStream {
  /** The stored resume id (undefined before the first event or position). */
  readonly lastEventId: string | undefined
  readonly status: StreamStatus
  /** Stops reading and reconnecting; the resume id stays stored for the next page load. */
  close(): void
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done() {
      clearTimeout(timer)
      signal.removeEventListener("abort", done)
      resolve()
    }
    signal.addEventListener("abort", done)
  })

/** Reports a throwing handler without ending the stream. */
const report = (error: unknown) =>
  queueMicrotask(() => {
    throw error
  })

/** Why an event failed its channel's schema, as issues. */
const issuesOf = (
  channel: AnyChannel,
  event: BusEvent,
):
  | ReadonlyArray<StandardSchemaV1.Issue>
  | { readonly value: unknown }
  | Promise<ReadonlyArray<StandardSchemaV1.Issue> | { readonly value: unknown }> => {
  const schema = Object.hasOwn(channel.events, event.type) ? channel.events[event.type] : undefined
  if (schema === undefined)
    return [{ message: `channel ${channel.name} declares no event type ${event.type}` }]
  const settle = (r: StandardSchemaV1.Result<unknown>) =>
    r.issues === undefined ? { value: r.value } : r.issues
  try {
    const result = schema["~standard"].validate(event.data)
    return result instanceof Promise
      ? result.then(settle, (e: unknown) => [{ message: `the schema threw: ${String(e)}` }])
      : settle(result)
  } catch (e) {
    return [{ message: `the schema threw: ${String(e)}` }]
  }
}

/**
 * Follows one `@bus/sse` stream until `close()`. Give typed channels (from `defineChannel`)
 * in `channels` and the events are typed by their schemas and checked on arrival; or name
 * the channels and declare the payloads as a type argument (not checked).
 *
 * @example
 * ```ts
 * import { defineChannel } from "@bus/core"
 * import { followStream } from "@bus/sse/client"
 * import { Schema } from "effect"
 *
 * // Usually imported from a module shared with the server (zod and valibot schemas work too).
 * const orders = defineChannel("orders", {
 *   "order.paid": Schema.toStandardSchemaV1(Schema.Struct({ orderId: Schema.String, total: Schema.Number })),
 *   "order.shipped": Schema.toStandardSchemaV1(Schema.Struct({ orderId: Schema.String, carrier: Schema.String })),
 * })
 * const stream = followStream({ url: "/events", channels: [orders] }, {
 *   onEvent: (e) => {
 *     if (e.type === "order.shipped") console.log(e.data.carrier)
 *   },
 * })
 * stream.close()
 * ```
 *
 * @example
 * ```ts
 * import { followStream } from "@bus/sse/client"
 *
 * type Orders = { "order.paid": { orderId: number }; "order.shipped": { orderId: number; carrier: string } }
 * const stream = followStream<Orders>(
 *   { url: "/events", channels: ["orders"], headers: () => ({ Authorization: `Bearer ${"token"}` }) },
 *   {
 *     onEvent: (e) => {
 *       if (e.type === "order.shipped") console.log(e.data.carrier)
 *     },
 *     onReset: () => location.reload(),
 *   },
 * )
 * stream.close()
 * ```
 */
export function followStream<const Channels extends ReadonlyArray<string | AnyChannel>>(
  options: FollowStreamOptions & { readonly channels: Channels },
  handlers: StreamHandlers<Record<string, unknown>, ChannelEventOf<Channels[number]>>,
): BusStream
export function followStream<Types extends Record<string, unknown> = Record<string, unknown>>(
  options: FollowStreamOptions,
  handlers: StreamHandlers<Types>,
): BusStream
export function followStream(
  options: FollowStreamOptions,
  handlers: StreamHandlers<Record<string, unknown>, BusEvent>,
): BusStream {
  if (options.channels.length === 0) throw new TypeError("followStream: give at least one channel")
  const names = options.channels.map((c) => (typeof c === "string" ? c : c.name))
  const typed = new Map<string, AnyChannel>()
  for (const c of options.channels) if (typeof c !== "string") typed.set(c.name, c)
  const storage = options.storage ?? defaultStorage()
  const key = options.key ?? streamKey(options.url, names)
  const initialRetryMs = Math.max(1, options.initialRetryMs ?? 1_000)
  const maxRetryMs = Math.max(initialRetryMs, options.maxRetryMs ?? 30_000)
  const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis)
  const stop = new AbortController()
  let status: StreamStatus = { state: "connecting", attempt: 0 }
  let stored: string | undefined = storage.getItem(key) ?? undefined
  const setStatus = (s: StreamStatus) => {
    status = s
    try {
      handlers.onStatus?.(s)
    } catch (error) {
      report(error)
    }
  }
  const save = (id: string) => {
    if (id === (stored ?? "")) return
    stored = id === "" ? undefined : id
    try {
      if (stored === undefined) storage.removeItem(key)
      else storage.setItem(key, stored)
    } catch {
      // Storage full or gone: the id still lives in memory for this page.
    }
  }
  const url = new URL(
    options.url,
    (globalThis as { location?: { href: string } }).location?.href ?? undefined,
  )
  for (const channel of names) url.searchParams.append("channel", channel)

  const run = async () => {
    let attempt = 0
    let serverRetryMs = 0
    while (!stop.signal.aborted) {
      const connection = new AbortController()
      const onStop = () => connection.abort()
      stop.signal.addEventListener("abort", onStop)
      let reconnectAtOnce = false
      let failure: { reason: string; httpStatus?: number } | undefined
      try {
        setStatus({ state: "connecting", attempt })
        const extra =
          typeof options.headers === "function" ? await options.headers() : (options.headers ?? {})
        const headers: Record<string, string> = { Accept: "text/event-stream", ...extra }
        if (stored !== undefined) headers["Last-Event-ID"] = stored
        const response = await fetchFn(url, {
          headers,
          signal: connection.signal,
          cache: "no-store",
          credentials: options.credentials ?? "same-origin",
        })
        if (!response.ok || response.body === null) {
          failure = { reason: `HTTP ${response.status}`, httpStatus: response.status }
          await response.body?.cancel().catch(() => {})
        } else if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
          failure = {
            reason: `not an event stream (${response.headers.get("content-type") ?? "no content type"})`,
          }
          await response.body.cancel().catch(() => {})
        } else {
          setStatus({ state: "open" })
          const parser = new EventStreamParser(stored ?? "")
          const reader = response.body.getReader()
          for (;;) {
            const { done, value } = await reader.read()
            if (done) break
            for (const e of parser.push(value)) {
              if (e.event === "message") {
                attempt = 0
                let event: BusEvent
                try {
                  event = JSON.parse(e.data) as BusEvent
                } catch {
                  continue // Not one of ours; a conforming server sends JSON.
                }
                // A typed channel's event is checked (an async schema awaited: events stay in
                // order) and handed on in the schema's output form; one that fails is reported
                // and skipped, and the resume id still moves past it.
                const channel = typed.get(event.channel)
                const checked = channel === undefined ? undefined : issuesOf(channel, event)
                const outcome = checked instanceof Promise ? await checked : checked
                if (outcome !== undefined && !("value" in outcome)) {
                  try {
                    if (handlers.onInvalid) handlers.onInvalid(event, outcome)
                    else
                      console.warn(
                        `@bus/sse/client: skipping event ${event.id}: it does not match its schema`,
                        outcome,
                      )
                  } catch (error) {
                    report(error)
                  }
                } else {
                  if (outcome !== undefined && outcome.value !== event.data)
                    event = { ...event, data: outcome.value }
                  try {
                    handlers.onEvent(event)
                  } catch (error) {
                    report(error)
                  }
                }
                // Stored once the handler has seen the event: a reload resumes after it.
                save(e.lastEventId)
              } else if (e.event === "reset") {
                save("")
                parser.lastEventId = ""
                reconnectAtOnce = true
                let info: ResetInfo
                try {
                  info = JSON.parse(e.data) as ResetInfo
                } catch {
                  info = { reason: "unknown", message: e.data }
                }
                try {
                  handlers.onReset?.(info)
                } catch (error) {
                  report(error)
                }
              } else if (e.event === "overflow") {
                reconnectAtOnce = true
              }
            }
            // An id-only frame (the stream's start position) moves the resume id too.
            save(parser.lastEventId)
            if (parser.retryMs !== undefined) serverRetryMs = parser.retryMs
          }
          if (!reconnectAtOnce) failure = { reason: "the server ended the stream" }
        }
      } catch (error) {
        if (stop.signal.aborted) break
        failure = { reason: error instanceof Error ? error.message : String(error) }
      } finally {
        stop.signal.removeEventListener("abort", onStop)
        connection.abort()
      }
      if (stop.signal.aborted) break
      if (reconnectAtOnce && failure === undefined) {
        attempt = 0
        continue
      }
      const cap = Math.min(maxRetryMs, initialRetryMs * 2 ** Math.min(attempt, 20))
      const inMs = Math.max(serverRetryMs, Math.round(Math.random() * cap))
      attempt++
      setStatus({
        state: "retrying",
        attempt,
        inMs,
        reason: failure?.reason ?? "reconnecting",
        ...(failure?.httpStatus !== undefined ? { httpStatus: failure.httpStatus } : {}),
      })
      await sleep(inMs, stop.signal)
    }
    setStatus({ state: "closed" })
  }

  const close = () => stop.abort()
  if (options.signal?.aborted) close()
  else options.signal?.addEventListener("abort", close, { once: true })
  void run()
  const stream: BusStream = {
    get lastEventId() {
      return stored
    },
    get status() {
      return status
    },
    close,
  }
  return stream
}
