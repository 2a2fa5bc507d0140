/**
 * The SSE `id:` of this package, which the browser sends back as `Last-Event-ID`.
 *
 * - One channel on the connection: the id is the bus cursor itself, unchanged.
 * - Several channels: `sse1.` followed by base64url(JSON object channel → cursor), holding
 *   the position of every channel as of that event. Any one id therefore resumes all the
 *   channels of the connection, whichever channel the event came from.
 *
 * A bus cursor that could not travel as an SSE id (a line break or NUL in it, or the
 * composite prefix) is wrapped in the composite form even on one channel.
 *
 * @module
 */

/** Prefix of the composite (several-channel) form. */
export const compositePrefix = "sse1."

const unsafe = /[\r\n\0]/

/** Base64url of UTF-8 text, with the universally available `btoa` (Node, Deno, Bun, browsers). */
const toBase64Url = (text: string): string => {
  let binary = ""
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte)
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "")
}

const fromBase64Url = (encoded: string): string => {
  if (!/^[A-Za-z0-9_-]*$/.test(encoded)) throw new Error("not base64url")
  const binary = atob(encoded.replaceAll("-", "+").replaceAll("_", "/"))
  return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)))
}

/**
 * The id for the given positions. `channelCount` is the number of channels on the
 * connection (not the number of known positions): a connection of two channels always
 * uses the composite form, even while only one of them has a position.
 * Returns `undefined` when there is no position to send.
 */
export const encodeSseId = (
  positions: ReadonlyMap<string, string>,
  channelCount: number,
): string | undefined => {
  if (positions.size === 0) return undefined
  if (channelCount === 1 && positions.size === 1) {
    const cursor = positions.values().next().value
    if (cursor !== undefined && !unsafe.test(cursor) && !cursor.startsWith(compositePrefix)) return cursor
  }
  return compositePrefix + toBase64Url(JSON.stringify(Object.fromEntries(positions)))
}

/** Why a `Last-Event-ID` could not be read. */
export interface SseIdError {
  readonly reason: "malformed"
  readonly message: string
}

/**
 * Reads a `Last-Event-ID` for a connection of `channels`: the position per channel it
 * names. Channels it does not name are left out (they start where a new connection
 * does); positions of channels not on this connection are dropped.
 */
export const decodeSseId = (
  id: string,
  channels: ReadonlyArray<string>,
): ReadonlyMap<string, string> | SseIdError => {
  if (!id.startsWith(compositePrefix)) {
    if (channels.length === 1) return new Map([[channels[0]!, id]])
    return {
      reason: "malformed",
      message: `Last-Event-ID is the cursor of a single channel, but this stream has ${channels.length} channels`,
    }
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(fromBase64Url(id.slice(compositePrefix.length)))
  } catch {
    return { reason: "malformed", message: "Last-Event-ID is not a valid @bus/sse composite id" }
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return { reason: "malformed", message: "Last-Event-ID composite id does not hold a channel map" }
  }
  const entries = new Map(Object.entries(parsed))
  const positions = new Map<string, string>()
  for (const channel of channels) {
    const cursor = entries.get(channel)
    if (cursor === undefined) continue
    if (typeof cursor !== "string" || cursor.length === 0) {
      return { reason: "malformed", message: `Last-Event-ID holds no valid cursor for channel ${channel}` }
    }
    positions.set(channel, cursor)
  }
  return positions
}
