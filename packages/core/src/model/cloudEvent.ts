import { Effect, Schema } from "effect"
import type { Envelope, Json } from "./envelope.js"
import { InvalidEvent, type InvalidName } from "./errors.js"
import { checkAddress } from "./name.js"
import { isUuidv7 } from "./uuidv7.js"

/**
 * Mapping between the envelope and CloudEvents 1.0 structured JSON. Tenant and channel
 * travel as the extension attributes `bustenant` and `buschannel` (CloudEvents extension
 * names are lower-case alphanumerics only); headers travel as extension attributes
 * named `bush_<lower-case name>` only when the name fits that alphabet, otherwise in
 * the `busheaders` JSON extension, so nothing is lost either way.
 *
 * @module
 */

/** A CloudEvents 1.0 event in structured JSON form. */
export interface CloudEvent {
  readonly specversion: "1.0"
  readonly id: string
  readonly source: string
  readonly type: string
  readonly time: string
  readonly datacontenttype: "application/json"
  readonly data: Json
  readonly bustenant: string
  readonly buschannel: string
  readonly busheaders?: string
  readonly traceparent?: string
  readonly tracestate?: string
}

/** Envelope → CloudEvent. `source` defaults to `/bus/<tenant>/<channel>`. */
export const toCloudEvent = (envelope: Envelope, source?: string): CloudEvent => {
  const { traceparent, tracestate, ...rest } = envelope.headers
  return {
    specversion: "1.0",
    id: envelope.id,
    source: source ?? `/bus/${envelope.tenant}/${envelope.channel}`,
    type: envelope.type,
    time: envelope.time,
    datacontenttype: "application/json",
    data: envelope.data,
    bustenant: envelope.tenant,
    buschannel: envelope.channel,
    ...(Object.keys(rest).length > 0 ? { busheaders: JSON.stringify(rest) } : {}),
    // The W3C distributed-tracing extension names these attributes exactly so.
    ...(traceparent !== undefined ? { traceparent } : {}),
    ...(tracestate !== undefined ? { tracestate } : {}),
  }
}

const CloudEventSchema = Schema.Struct({
  specversion: Schema.Literal("1.0"),
  id: Schema.String,
  type: Schema.String,
  time: Schema.String,
  data: Schema.optional(Schema.Json),
  bustenant: Schema.String,
  buschannel: Schema.String,
  busheaders: Schema.optional(Schema.String),
  traceparent: Schema.optional(Schema.String),
  tracestate: Schema.optional(Schema.String),
})

const decodeCloudEvent = Schema.decodeUnknownEffect(CloudEventSchema)
const decodeHeaders = Schema.decodeUnknownEffect(
  Schema.fromJsonString(Schema.Record(Schema.String, Schema.String)),
)

/** CloudEvent → Envelope; fails with {@link InvalidEvent} when required attributes are missing. */
export const fromCloudEvent = (u: unknown): Effect.Effect<Envelope, InvalidEvent | InvalidName> =>
  Effect.gen(function* () {
    const ce = yield* decodeCloudEvent(u).pipe(
      Effect.mapError(
        (e) => new InvalidEvent({ reason: "cloudevent", message: `not a @bus CloudEvent: ${e.message}` }),
      ),
    )
    if (!isUuidv7(ce.id)) {
      return yield* new InvalidEvent({
        reason: "cloudevent",
        message: `id ${JSON.stringify(ce.id)} is not a lower-case UUIDv7`,
      })
    }
    const { tenant, channel } = yield* checkAddress({ tenant: ce.bustenant, channel: ce.buschannel })
    const extra =
      ce.busheaders === undefined
        ? {}
        : yield* decodeHeaders(ce.busheaders).pipe(
            Effect.mapError(
              (e) =>
                new InvalidEvent({
                  reason: "cloudevent",
                  message: `busheaders is not a JSON string map: ${e.message}`,
                }),
            ),
          )
    const headers: Record<string, string> = { ...extra }
    if (ce.traceparent !== undefined) headers.traceparent = ce.traceparent
    if (ce.tracestate !== undefined) headers.tracestate = ce.tracestate
    return {
      id: ce.id,
      tenant,
      channel,
      type: ce.type,
      time: ce.time,
      data: (ce.data ?? null) as Json,
      headers,
    }
  })
