/**
 * An incremental text/event-stream parser (the WHATWG "event stream interpretation"), for
 * streams read with `fetch` instead of `EventSource`: bytes in, dispatched events out.
 * Kept to what the spec says so it reads any conforming server, not only ours: fields
 * `event`, `data` (joined with newlines), `id` (ignored when it holds NUL; an empty one
 * clears the last event id), `retry` (digits only); comment lines start with `:`; lines end
 * with CRLF, LF or CR, also split across chunks.
 *
 * @module
 */

/** One dispatched event. `lastEventId` is the stream's last event id after it. */
export interface ParsedEvent {
  readonly event: string
  readonly data: string
  readonly lastEventId: string
}

export class EventStreamParser {
  readonly #decoder = new TextDecoder()
  #buffer = ""
  #event = ""
  #data: string[] = []
  #hasData = false
  /** Last event id of the stream; an `id:` line sets it even when no event follows. */
  lastEventId = ""
  /** Reconnection time the server asked for with `retry:`, if it did. */
  retryMs: number | undefined
  /** A CR ended the previous chunk: a LF at the start of the next one belongs to it. */
  #pendingCr = false

  constructor(lastEventId = "") {
    this.lastEventId = lastEventId
  }

  /** Feeds a chunk; returns the events it completed, in order. */
  push(chunk: Uint8Array | string): ParsedEvent[] {
    let text = typeof chunk === "string" ? chunk : this.#decoder.decode(chunk, { stream: true })
    if (this.#pendingCr && text.startsWith("\n")) text = text.slice(1)
    this.#pendingCr = false
    this.#buffer += text
    const out: ParsedEvent[] = []
    let start = 0
    for (let i = 0; i < this.#buffer.length; i++) {
      const c = this.#buffer.charCodeAt(i)
      if (c !== 10 && c !== 13) continue
      this.#line(this.#buffer.slice(start, i), out)
      if (c === 13) {
        if (i + 1 === this.#buffer.length) this.#pendingCr = true
        else if (this.#buffer.charCodeAt(i + 1) === 10) i++
      }
      start = i + 1
    }
    this.#buffer = this.#buffer.slice(start)
    return out
  }

  #line(line: string, out: ParsedEvent[]): void {
    if (line === "") {
      if (this.#hasData)
        out.push({
          event: this.#event || "message",
          data: this.#data.join("\n"),
          lastEventId: this.lastEventId,
        })
      this.#event = ""
      this.#data = []
      this.#hasData = false
      return
    }
    if (line.startsWith(":")) return
    const colon = line.indexOf(":")
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? "" : line.slice(colon + 1)
    if (value.startsWith(" ")) value = value.slice(1)
    if (field === "data") {
      this.#data.push(value)
      this.#hasData = true
    } else if (field === "event") this.#event = value
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value
    } else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value)
  }
}
