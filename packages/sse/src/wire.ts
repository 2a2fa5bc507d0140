/**
 * The text/event-stream wire format: the frames this package writes and the response
 * headers that keep proxies from buffering or caching the stream.
 *
 * Bus events are sent without an `event:` line, so browsers dispatch them as `message`
 * and one `onmessage` handler sees every type (the type is inside the JSON). Named
 * events are reserved for control frames (`reset`, `overflow`), which an application
 * event type can therefore never be mistaken for.
 *
 * @module
 */

/** Response headers of every SSE stream (all runtimes). */
export const sseHeaders: Readonly<Record<string, string>> = {
  "Content-Type": "text/event-stream; charset=utf-8",
  // no-transform: compressing proxies would otherwise buffer the stream to compress it.
  "Cache-Control": "no-cache, no-transform",
  // nginx buffers proxied responses unless told not to.
  "X-Accel-Buffering": "no",
}

/** Names of the control events a client should listen for. */
export const controlEvents = {
  /** The stream cannot resume from the client's cursor: reload state, then reconnect without it. */
  reset: "reset",
  /** The client fell too far behind and is being disconnected; it reconnects and resumes by cursor. */
  overflow: "overflow",
} as const

/** `data:` lines for `text`: one per line of it, so a newline inside can never end the frame early. */
const dataLines = (text: string): string =>
  text
    .split(/\r\n|\r|\n/)
    .map((line) => `data: ${line}\n`)
    .join("")

/** A frame carrying one bus event: `id:` is the resume position, `data:` the JSON. */
export const eventFrame = (id: string | undefined, data: string): string =>
  (id === undefined ? "" : `id: ${id}\n`) + eventData(data)

/** The part of {@link eventFrame} after the `id:` line: the `data:` lines and the blank line. */
export const eventData = (data: string): string => `${dataLines(data)}\n`

/**
 * A named control frame. `clearId` sends an empty `id:`, which resets the browser's
 * last event id, so an automatic reconnect does not send the same unusable cursor again.
 */
export const controlFrame = (event: string, body: unknown, clearId = false): string =>
  `event: ${event}\n` + (clearId ? "id:\n" : "") + dataLines(JSON.stringify(body)) + "\n"

/** The first frame of every stream: `retry:`, sent once, tells the browser how long to wait before reconnecting. */
export const retryFrame = (retryMs: number): string => `retry: ${Math.round(retryMs)}\n\n`

/**
 * A frame with only an `id:`. It dispatches no event, but the browser still records the
 * id as its last event id, so a reconnect before the first event resumes from where this
 * stream began instead of from a later "now".
 */
export const positionFrame = (id: string): string => `id: ${id}\n\n`

/** The heartbeat: a comment line, ignored by clients, that keeps the connection from idling out. */
export const heartbeatFrame = ": ping\n\n"
