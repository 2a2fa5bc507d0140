import { Tracer } from "effect"
import type { Address } from "../contracts/outboxStore.js"
import type { Envelope } from "../model/envelope.js"

/**
 * Tracing conventions of the bus: span names and attributes after the OpenTelemetry
 * messaging semantic conventions, and W3C trace context carried in the envelope's
 * `traceparent` header. See docs/observability.md.
 *
 * - `publish <channel>` (kind `producer`): one per `publish` call, with
 *   `messaging.operation.type` `send`. When the caller has a span, the publish span's
 *   context is written to every event's `traceparent` header (unless the event already
 *   has one).
 * - `send <channel>` (kind `producer`): the relay forwarding one event to a broker, linked
 *   to the producer's span.
 * - `process <channel>` (kind `consumer`): a consumer-group handler run, linked to the
 *   producer's span.
 *
 * @module
 */

/** Operation types of the messaging conventions that the bus uses. */
export type MessagingOperation = "send" | "process" | "receive"

/** `messaging.destination.name` of an address: `<tenant>/<channel>`. */
export const destinationOf = (address: Address): string => `${address.tenant}/${address.channel}`

/** The messaging attributes of a span over one address. */
export const messagingAttributes = (
  system: string,
  address: Address,
  operation: { readonly type: MessagingOperation; readonly name: string },
  extra: Readonly<Record<string, unknown>> = {},
): Record<string, unknown> => ({
  "messaging.system": system,
  "messaging.destination.name": destinationOf(address),
  "messaging.destination.template": `{tenant}/${address.channel}`,
  "messaging.operation.type": operation.type,
  "messaging.operation.name": operation.name,
  "bus.tenant": address.tenant,
  "bus.channel": address.channel,
  ...extra,
})

/** Attributes of one message. */
export const messageAttributes = (event: Envelope): Record<string, unknown> => ({
  "messaging.message.id": event.id,
  "bus.event.type": event.type,
})

const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

/** The W3C `traceparent` of a span: `00-<trace id>-<span id>-<flags>`. */
export const traceparentOf = (span: Tracer.AnySpan): string | undefined => {
  const traceId = span.traceId.toLowerCase()
  const spanId = span.spanId.toLowerCase()
  // Only real W3C ids travel: a tracer with other id formats (or none) adds nothing.
  if (!/^[0-9a-f]{32}$/.test(traceId) || !/^[0-9a-f]{16}$/.test(spanId)) return undefined
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined
  return `00-${traceId}-${spanId}-${span.sampled ? "01" : "00"}`
}

/** The producer's span context from an event's `traceparent` header, as an external span. */
export const producerSpanOf = (event: Envelope): Tracer.ExternalSpan | undefined => {
  const header = event.headers.traceparent
  if (header === undefined) return undefined
  const m = traceparentPattern.exec(header.trim().toLowerCase())
  if (m === null || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined
  return Tracer.externalSpan({
    traceId: m[1]!,
    spanId: m[2]!,
    sampled: (Number.parseInt(m[3]!, 16) & 1) === 1,
  })
}

/** Span links to the producers of `events` (one per distinct producer span). */
export const producerLinks = (events: ReadonlyArray<Envelope>): Array<Tracer.SpanLink> => {
  const seen = new Set<string>()
  const links: Array<Tracer.SpanLink> = []
  for (const event of events) {
    const span = producerSpanOf(event)
    if (span === undefined || seen.has(span.spanId)) continue
    seen.add(span.spanId)
    links.push({ span, attributes: { "messaging.message.id": event.id } })
  }
  return links
}

/** Milliseconds since the event was published (never negative). */
export const ageOf = (event: Envelope, now: number = Date.now()): number => {
  const t = Date.parse(event.time)
  return Number.isFinite(t) ? Math.max(0, now - t) : 0
}
