import type { DeliveredEvent } from "@bus/core"
import type { AnyChannel, StartPosition } from "@bus/core/adapter"
import { FrameCache } from "./frames.js"

/**
 * Options shared by every SSE entry point (Web `Response`, Node, Fastify, Express), their
 * defaults, and the check that refuses to build an endpoint without an authorization hook.
 *
 * @module
 */

/**
 * What a request may read: one tenant and the channels of it this request may open (names,
 * or typed channels from `defineChannel`, which stand for their names).
 */
export interface SseGrant {
  readonly tenant: string
  readonly channels: ReadonlyArray<string | AnyChannel>
}

/** A channel's name, whether given by name or as a typed channel. */
export const nameOf = (channel: string | AnyChannel): string =>
  typeof channel === "object" && channel !== null ? channel.name : channel

/**
 * A refusal from the authorization hook: `401` when the caller is not authenticated,
 * `403` when it is but may not read this. `headers` are added to the response (for example
 * `WWW-Authenticate` on a 401).
 */
export interface SseRefusal {
  readonly status: 401 | 403
  readonly message?: string
  readonly headers?: Readonly<Record<string, string>>
}

/** What the authorization hook returns: a grant, a typed refusal, or `false` (403). */
export type AuthorizeResult = SseGrant | SseRefusal | false

/**
 * Decides which tenant and channels a request may read. Runs before anything is
 * subscribed; a throw or rejection is a server error (the helper does not stream).
 */
export type Authorize<Req> = (request: Req) => AuthorizeResult | Promise<AuthorizeResult>

/** Options of every SSE helper; `Req` is the request type of the framework in use. */
export interface SseOptions<Req> {
  /**
   * Required. Decides what the request may read. There is deliberately no default: an
   * endpoint that streams a tenant's events must say who may see them.
   */
  readonly authorize: Authorize<Req>
  /**
   * Tenant to stream when the request does not name one (`?tenant=`); default: the
   * granted tenant.
   */
  readonly tenant?: string
  /**
   * Channels to stream when the request does not name any (`?channel=a&channel=b`);
   * default: every granted channel. Typed channels stand for their names: the stream
   * carries events as stored (the schema's input form) and `@bus/sse/client`, given the
   * same channels, checks and decodes them in the browser.
   */
  readonly channels?: ReadonlyArray<string | AnyChannel>
  /** Where a connection without `Last-Event-ID` starts: a cursor, `"beginning"` or `"now"` (default). */
  readonly from?: StartPosition
  /**
   * Resolves `"now"` to a concrete cursor per channel, so the first `id:` sent can resume
   * a channel that has had no event yet. Default: `bus.head(address)` when the source is
   * a bus; see docs/sse.md.
   */
  readonly head?: (address: { readonly tenant: string; readonly channel: string }) => Promise<string>
  /** `retry:` sent once at the start, in ms: how long the browser waits before reconnecting (default 2000). */
  readonly retryMs?: number
  /** Interval of the `: ping` comment that keeps proxies from closing an idle stream, in ms (default 15 000). */
  readonly heartbeatMs?: number
  /** Events a slow client may have waiting before it is disconnected (default 1000). */
  readonly maxBufferedEvents?: number
  /** Bytes a slow client may have waiting before it is disconnected (default 4 MiB). */
  readonly maxBufferedBytes?: number
  /**
   * When the server ends a stream (overflow, reset, a closing bus) it ends the response
   * gracefully, so a client that is merely slow still reads the last frames; one that has
   * not read to the end after this many ms is cut off (default 5000).
   */
  readonly closeGraceMs?: number
  /** Most channels one connection may open (default 32): each one is a subscription. */
  readonly maxChannels?: number
  /** Turns an event into the `data:` text (default `JSON.stringify(event)`). */
  readonly serialize?: (event: DeliveredEvent) => string
  /**
   * Told about failures that end a stream without a `reset` (a transport that gave up, an
   * authorization hook that threw in the Node handler). The client reconnects and resumes.
   */
  readonly onError?: (error: unknown) => void
  /** Told when a slow client is disconnected for overflowing its buffer. */
  readonly onOverflow?: (info: { readonly tenant: string; readonly channels: ReadonlyArray<string> }) => void
}

/** Options with every default filled in. */
export interface ResolvedSseOptions<Req> extends SseOptions<Req> {
  readonly channels?: ReadonlyArray<string>
  readonly from: StartPosition
  readonly retryMs: number
  readonly heartbeatMs: number
  readonly maxBufferedEvents: number
  readonly maxBufferedBytes: number
  readonly closeGraceMs: number
  readonly maxChannels: number
  readonly serialize: (event: DeliveredEvent) => string
  /** Encoded frames shared by every stream of this endpoint (one encoding per event per process). */
  readonly frames: FrameCache
}

/** Default interval of the heartbeat comment, in ms. */
export const defaultHeartbeatMs = 15_000
/** Default `retry:` value, in ms. */
export const defaultRetryMs = 2_000
/** Default bound on events waiting for a slow client. */
export const defaultMaxBufferedEvents = 1_000
/** Default bound on bytes waiting for a slow client. */
export const defaultMaxBufferedBytes = 4 * 1024 * 1024

const positive = (name: string, value: number | undefined, fallback: number): number => {
  if (value === undefined) return fallback
  if (!Number.isFinite(value) || value <= 0) {
    throw new TypeError(`@bus/sse: ${name} must be a positive number, got ${String(value)}`)
  }
  return value
}

/**
 * Validates options and fills defaults. Throws when `authorize` is missing, so a
 * misconfigured endpoint fails when the server starts instead of serving everyone.
 */
export const resolveOptions = <Req>(options: SseOptions<Req> | undefined): ResolvedSseOptions<Req> => {
  if (typeof options?.authorize !== "function") {
    throw new TypeError(
      "@bus/sse: options.authorize is required. It decides which tenant and channels a request may read " +
        "(return { tenant, channels }, { status: 401 } or false); an SSE endpoint without it would stream " +
        "every tenant's events to anyone.",
    )
  }
  const serialize = options.serialize ?? ((event: DeliveredEvent) => JSON.stringify(event))
  return {
    ...options,
    channels: options.channels?.map(nameOf),
    from: options.from ?? "now",
    retryMs: positive("retryMs", options.retryMs, defaultRetryMs),
    heartbeatMs: positive("heartbeatMs", options.heartbeatMs, defaultHeartbeatMs),
    maxBufferedEvents: positive("maxBufferedEvents", options.maxBufferedEvents, defaultMaxBufferedEvents),
    maxBufferedBytes: positive("maxBufferedBytes", options.maxBufferedBytes, defaultMaxBufferedBytes),
    closeGraceMs: positive("closeGraceMs", options.closeGraceMs, 5_000),
    maxChannels: positive("maxChannels", options.maxChannels, 32),
    serialize,
    frames: new FrameCache(serialize),
  }
}
