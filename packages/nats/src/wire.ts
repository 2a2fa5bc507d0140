import type { DeliveredEvent } from "@bus/core"
import {
  type Address,
  decodeEnvelope,
  type Envelope,
  envelopeToJson,
  type SendMeta,
  withFrontier,
} from "@bus/core/adapter"
import { type MsgHdrs, headers as natsHeaders } from "@nats-io/transport-node"
import { Effect } from "effect"
import { type CursorPlace, encodeCursor } from "./cursor.js"

/**
 * What goes on the wire: the envelope as compact JSON (the same bytes the outbox
 * measures), `Nats-Msg-Id` = event id, and the W3C trace headers copied into NATS
 * headers so tracing tools see them without parsing the body.
 *
 * @module
 */

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

/** Bytes kept free of the server's `max_payload` for NATS headers (Nats-Msg-Id, traceparent, tracestate). */
export const headerReserveBytes = 1024

/** Trace headers carried as NATS headers too, with their longest accepted value. */
const traceHeaders: ReadonlyArray<readonly [string, number]> = [
  ["traceparent", 128],
  ["tracestate", 512],
]
const printable = /^[\x20-\x7e]*$/

/** The envelope's JSON bytes, fields in their canonical order. */
export const encodeEnvelope = (event: Envelope): Uint8Array => encoder.encode(envelopeToJson(event))

/** Header with the event's outbox position, stored by the relay (cursors across a flip, docs/flip.md). */
export const positionHeader = "Bus-Outbox-Position"
/** Header with the event's outbox frontier, appended to its cursor after `~` (docs/flip.md). */
export const frontierHeader = "Bus-Outbox-Frontier"
/** Longest position or frontier carried (the relay keeps them far shorter). */
const maxOutboxHeader = 256

const outboxHeaders = (meta: SendMeta | undefined): ReadonlyArray<readonly [string, string]> => {
  const out: Array<readonly [string, string]> = []
  for (const [name, value] of [
    [positionHeader, meta?.position],
    [frontierHeader, meta?.frontier],
  ] as const) {
    if (value !== undefined && value.length > 0 && value.length <= maxOutboxHeader && printable.test(value))
      out.push([name, value])
  }
  return out
}

/** NATS headers for an event: trace context, and the relay's outbox position and frontier (the id travels as `msgID`). */
export const traceHeadersOf = (event: Envelope, meta?: SendMeta): MsgHdrs | undefined => {
  let h: MsgHdrs | undefined
  for (const [name, max] of traceHeaders) {
    const value = event.headers[name]
    // Only well-formed single-line values: a header value must never smuggle a CR/LF.
    if (value === undefined || value.length === 0 || value.length > max || !printable.test(value)) continue
    h ??= natsHeaders()
    h.set(name, value)
  }
  for (const [name, value] of outboxHeaders(meta)) {
    h ??= natsHeaders()
    h.set(name, value)
  }
  return h
}

/**
 * The encoded NATS header block of a relayed publish: `Nats-Msg-Id`, then exactly the
 * headers {@link traceHeadersOf} sets, in the text `MsgHdrs#encode` writes. The relay's
 * publishes carry it as is, so a batch builds no `MsgHdrs` (a map, key checks and a
 * string rebuilt per message); its length is the exact header size for the max_payload check.
 */
export const publishHeaderBlock = (event: Envelope, meta?: SendMeta): Uint8Array => {
  let s = `NATS/1.0\r\nNats-Msg-Id: ${event.id}`
  for (const [name, max] of traceHeaders) {
    const value = event.headers[name]
    if (value === undefined || value.length === 0 || value.length > max || !printable.test(value)) continue
    s += `\r\n${name}: ${value.trim()}`
  }
  for (const [name, value] of outboxHeaders(meta)) s += `\r\n${name}: ${value.trim()}`
  return encoder.encode(`${s}\r\n\r\n`)
}

/** The outbox position the relay stored with a message, if any. */
export const positionOfMessage = (headers: MsgHdrs | undefined): string | undefined =>
  headers?.get(positionHeader) || undefined

/** Upper bound of the encoded NATS header block for an event with `traceHeadersOf`. */
export const headerBytes = (event: Envelope, meta?: SendMeta): number => {
  let n = "NATS/1.0\r\n".length + `Nats-Msg-Id: ${event.id}\r\n`.length + 2
  for (const [name, value] of outboxHeaders(meta)) n += name.length + 2 + value.length + 2
  for (const [name, max] of traceHeaders) {
    const value = event.headers[name]
    if (value !== undefined && value.length > 0 && value.length <= max && printable.test(value)) {
      n += name.length + 2 + value.length + 2
    }
  }
  return n
}

/**
 * Decodes a stored message into a delivered event, or explains why it is not one of
 * ours: not UTF-8 JSON, not an envelope, or an envelope naming another address than
 * its subject (which would otherwise let a writer on one subject reach another tenant).
 */
export const decodeMessage = (
  data: Uint8Array,
  seq: number,
  address: Address,
  headers?: MsgHdrs,
  place?: CursorPlace,
): Effect.Effect<DeliveredEvent, string> =>
  Effect.gen(function* () {
    let json: unknown
    try {
      json = JSON.parse(decoder.decode(data))
    } catch (e) {
      return yield* Effect.fail(`not UTF-8 JSON (${e instanceof Error ? e.message : String(e)})`)
    }
    const envelope = yield* decodeEnvelope(json).pipe(Effect.mapError((e) => e.message))
    if (envelope.tenant !== address.tenant || envelope.channel !== address.channel) {
      return yield* Effect.fail(
        `envelope is for ${envelope.tenant}/${envelope.channel}, not ${address.tenant}/${address.channel}`,
      )
    }
    return {
      ...envelope,
      cursor: withFrontier(encodeCursor(seq, place), headers?.get(frontierHeader) || undefined, envelope),
    }
  })
