import { Effect, Schema } from "effect"
import { InvalidEvent, type InvalidName, PayloadTooLarge } from "../errors/BusError.js"
import { checkAddress } from "../names/Name.js"
import { isUuidv7, uuidv7 } from "./uuidv7.js"

/**
 * The event envelope: what a producer publishes, what the outbox stores and what a
 * subscriber receives. The same shape crosses every transport.
 *
 * @module
 */

/** A JSON value: what `data` may hold. */
export type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [key: string]: Json }

/** Wire schema of an envelope (what the outbox and brokers store). */
export const EnvelopeSchema = Schema.Struct({
  id: Schema.String,
  tenant: Schema.String,
  channel: Schema.String,
  type: Schema.String,
  data: Schema.Json,
  headers: Schema.Record(Schema.String, Schema.String),
  time: Schema.String,
})

/** An event as stored: everything but the cursor, which a transport assigns on delivery. */
export interface Envelope {
  /** UUIDv7, unique per event; the dedupe key everywhere. */
  readonly id: string
  readonly tenant: string
  readonly channel: string
  /** Application-defined event type, e.g. `order.paid`. */
  readonly type: string
  readonly data: Json
  /** String headers; `traceparent` and `tracestate` are carried through untouched. */
  readonly headers: Readonly<Record<string, string>>
  /** ISO-8601 time at which the producer published. */
  readonly time: string
}

/**
 * An envelope as a subscriber receives it: with the cursor that resumes the stream
 * right after this event (the SSE `id:`).
 */
export interface DeliveredEvent extends Envelope {
  readonly cursor: string
}

/** What a producer passes to `publish`. */
export interface EventInput {
  readonly tenant: string
  readonly channel: string
  readonly type: string
  readonly data?: Json
  readonly headers?: Readonly<Record<string, string>>
  /** Optional caller-chosen UUIDv7, for producers that need the id before publishing. */
  readonly id?: string
}

/** Default upper bound on one encoded envelope, in bytes (1 MiB). */
export const defaultMaxPayloadBytes = 1024 * 1024

const maxTypeLength = 256

const isPlainObject = (u: object): boolean => {
  const proto = Object.getPrototypeOf(u)
  return proto === Object.prototype || proto === null
}

/** Finds the first place where `value` is not JSON, so the error can point at it. */
const findNonJson = (value: unknown, path: string, seen: Set<object>): string | undefined => {
  if (value === null || typeof value === "string" || typeof value === "boolean") return undefined
  if (typeof value === "number") return Number.isFinite(value) ? undefined : `${path} is ${value}`
  if (typeof value !== "object") return `${path} is a ${typeof value}`
  if (seen.has(value)) return `${path} is a circular reference`
  seen.add(value)
  try {
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        const bad = findNonJson(value[i], `${path}[${i}]`, seen)
        if (bad) return bad
      }
      return undefined
    }
    if (!isPlainObject(value)) return `${path} is a ${value.constructor?.name ?? "non-plain"} object`
    for (const [k, v] of Object.entries(value)) {
      const bad = findNonJson(v, `${path}.${k}`, seen)
      if (bad) return bad
    }
    return undefined
  } finally {
    seen.delete(value)
  }
}

/**
 * The envelope as every transport stores it: compact JSON of exactly the stored fields in
 * their canonical order (a delivered event's `cursor` is not part of it).
 */
export const envelopeToJson = (envelope: Envelope): string =>
  JSON.stringify({
    id: envelope.id,
    tenant: envelope.tenant,
    channel: envelope.channel,
    type: envelope.type,
    data: envelope.data,
    headers: envelope.headers,
    time: envelope.time,
  })

/** Byte length of the envelope as every transport stores it (compact JSON, UTF-8). */
export const encodedSize = (envelope: Envelope): number => Buffer.byteLength(envelopeToJson(envelope), "utf8")

/**
 * Validates a producer's input and builds its envelope: names checked, data proven to be
 * JSON, headers proven to be strings, size within `maxPayloadBytes`. Fails without side
 * effects, so a bad event in a batch changes nothing.
 */
export const makeEnvelope = (
  input: EventInput,
  options: { readonly maxPayloadBytes?: number; readonly now?: Date } = {},
): Effect.Effect<Envelope, InvalidName | InvalidEvent | PayloadTooLarge> =>
  Effect.gen(function* () {
    if (typeof input !== "object" || input === null) {
      return yield* new InvalidEvent({ reason: "not-an-object", message: "an event must be an object" })
    }
    const { tenant, channel } = yield* checkAddress(input)
    if (typeof input.type !== "string" || input.type.length === 0 || input.type.length > maxTypeLength) {
      return yield* new InvalidEvent({
        reason: "type",
        message: `event type must be a non-empty string of at most ${maxTypeLength} characters`,
      })
    }
    const data = input.data === undefined ? null : input.data
    const nonJson = findNonJson(data, "data", new Set())
    if (nonJson !== undefined) {
      return yield* new InvalidEvent({ reason: "data", message: `event data must be JSON: ${nonJson}` })
    }
    const headers: Record<string, string> = {}
    if (input.headers !== undefined) {
      if (typeof input.headers !== "object" || input.headers === null || Array.isArray(input.headers)) {
        return yield* new InvalidEvent({ reason: "headers", message: "headers must be an object of strings" })
      }
      for (const [k, v] of Object.entries(input.headers)) {
        if (typeof v !== "string") {
          return yield* new InvalidEvent({
            reason: "headers",
            message: `header ${JSON.stringify(k)} must be a string`,
          })
        }
        headers[k] = v
      }
    }
    let id: string
    if (input.id === undefined) id = uuidv7()
    else if (typeof input.id === "string" && isUuidv7(input.id)) id = input.id
    else return yield* new InvalidEvent({ reason: "id", message: "id must be a lower-case UUIDv7 string" })
    const envelope: Envelope = {
      id,
      tenant,
      channel,
      type: input.type,
      data: data as Json,
      headers,
      time: (options.now ?? new Date()).toISOString(),
    }
    const limit = options.maxPayloadBytes ?? defaultMaxPayloadBytes
    const bytes = encodedSize(envelope)
    if (bytes > limit) {
      return yield* new PayloadTooLarge({
        bytes,
        limit,
        message: `event is ${bytes} bytes encoded; the limit is ${limit}`,
      })
    }
    return envelope
  })

const decodeEnvelopeSchema = Schema.decodeUnknownEffect(EnvelopeSchema)

/**
 * Parses an envelope read back from a store or broker. Anything that is not a valid
 * envelope (another writer's message, a corrupted row) fails with {@link InvalidEvent}.
 */
export const decodeEnvelope = (u: unknown): Effect.Effect<Envelope, InvalidEvent | InvalidName> =>
  decodeEnvelopeSchema(u).pipe(
    Effect.mapError(
      (e) => new InvalidEvent({ reason: "decode", message: `not a @bus envelope: ${e.message}` }),
    ),
    Effect.tap((e) =>
      isUuidv7(e.id)
        ? Effect.void
        : Effect.fail(
            new InvalidEvent({
              reason: "decode",
              message: `not a @bus envelope: id ${JSON.stringify(e.id)} is not a lower-case UUIDv7`,
            }),
          ),
    ),
    Effect.tap((e) => checkAddress(e)),
    Effect.map((e) => e as Envelope),
  )
