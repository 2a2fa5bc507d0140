import { Effect, Schema } from "effect"
import { InvalidEvent, type InvalidName, PayloadTooLarge } from "./errors.js"
import { checkAddress, validateName } from "./name.js"
import { isUuidv7, uuidv7 } from "./uuidv7.js"

/**
 * The event envelope: what a producer publishes, what the outbox stores and what a
 * subscriber receives. The same shape crosses every transport.
 *
 * @module
 */

/** A JSON value: what `data` may hold. */
export type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [key: string]: Json }

/**
 * What a producer may pass as `data`: a JSON value, where an object may be typed by an
 * interface (`interface Order { id: string; total: number }`). {@link Json}'s object form
 * has an index signature, which TypeScript never infers for an interface, so it would
 * refuse the most common way payloads are typed; this one takes any object instead.
 *
 * The type still refuses what is cheaply told apart from JSON: functions, symbols and
 * bigints, and (at the top level and in arrays) Dates, Maps and Sets. Deeper values are
 * not walked by the type; `publish` checks them at run time and refuses non-JSON data with
 * `InvalidEvent` (reason `data`), as before.
 */
export type JsonInput =
  | null
  | boolean
  | number
  | string
  | ReadonlyArray<JsonInput>
  | JsonObjectInput
  // Not needed for assignability (JsonObjectInput takes any data object) but for object
  // literals: without a member that knows every string key, `data: { orderId: 42 }` would
  // fail TypeScript's excess-property check against JsonObjectInput.
  | { readonly [key: string]: JsonInput }

/**
 * An object payload. The optional `never` members are the cheap part of the check: every
 * function has `Symbol.hasInstance`, Maps and Sets `Symbol.iterator`, Dates
 * `Symbol.toPrimitive`, while a data object never has symbol keys (JSON cannot hold them), so
 * an interface or type alias of data always fits.
 */
export type JsonObjectInput = object & {
  readonly [Symbol.hasInstance]?: never
  readonly [Symbol.iterator]?: never
  readonly [Symbol.toPrimitive]?: never
}

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
  /**
   * The payload: any JSON value (default `null`). Interface-typed objects are accepted;
   * values that are not JSON (a Date, a class instance, `undefined` inside an object…) are
   * refused at publish time with `InvalidEvent`.
   */
  readonly data?: JsonInput
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

// Below this depth the fast check gives up and the exact walk (which tracks the path and
// circular references) decides; a cycle therefore never loops the fast check.
const fastCheckDepth = 256

/**
 * True when `value` is certainly JSON; false when it is not or when the fast check cannot
 * tell (too deep, possibly circular). No paths are built: that is only done for the error.
 */
const isJsonFast = (value: unknown, depth: number): boolean => {
  if (value === null) return true
  switch (typeof value) {
    case "string":
    case "boolean":
      return true
    case "number":
      return Number.isFinite(value)
    case "object": {
      if (depth >= fastCheckDepth) return false
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) if (!isJsonFast(value[i], depth + 1)) return false
        return true
      }
      if (!isPlainObject(value)) return false
      for (const k in value) {
        // JSON.stringify writes own properties only, as Object.entries in the exact walk.
        if (!Object.hasOwn(value, k)) continue
        if (!isJsonFast((value as Record<string, unknown>)[k], depth + 1)) return false
      }
      return true
    }
    default:
      return false
  }
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
 * An envelope's stored form, computed once by {@link makeEnvelope} and kept inside the
 * (frozen) envelope, so stores and brokers reuse it instead of validating and encoding the
 * event again. `data` and `headers` are the JSON of those fields; `json` is the whole
 * envelope as {@link envelopeToJson} writes it.
 */
export interface EncodedEnvelope {
  readonly json: string
  readonly data: string
  readonly headers: string
}

/**
 * An envelope built by makeEnvelope: a frozen plain-data object whose private field holds
 * its encoding. Private fields are not properties: a spread copy, `JSON.stringify` or
 * `structuredClone` see exactly the envelope's fields, and a copy (which could be edited)
 * carries no encoding, so the encoding always matches the object it sits in.
 */
class BuiltEnvelope implements Envelope {
  readonly id: string
  readonly tenant: string
  readonly channel: string
  readonly type: string
  readonly data: Json
  readonly headers: Readonly<Record<string, string>>
  readonly time: string
  readonly #encoded: EncodedEnvelope
  // True while no store can hold this id yet: makeEnvelope generated it, and no store has
  // claimed it (see claimFreshId). Private, so it is not part of the envelope's data, and
  // writable although the object is frozen (freezing does not reach private fields).
  #fresh: boolean
  constructor(
    id: string,
    tenant: string,
    channel: string,
    type: string,
    data: Json,
    headers: Readonly<Record<string, string>>,
    time: string,
    encoded: EncodedEnvelope,
    fresh: boolean,
  ) {
    this.id = id
    this.tenant = tenant
    this.channel = channel
    this.type = type
    this.data = data
    this.headers = headers
    this.time = time
    this.#encoded = encoded
    this.#fresh = fresh
    Object.freeze(this)
  }
  static encodedOf(u: object): EncodedEnvelope | undefined {
    return #encoded in u ? u.#encoded : undefined
  }
  static claimFresh(u: object): boolean {
    if (!(#encoded in u) || !u.#fresh) return false
    u.#fresh = false
    return true
  }
}

/**
 * The stored form of an envelope that {@link makeEnvelope} validated, or `undefined` for
 * any other object (decoded from a store, built by hand, copied with a spread): those must
 * be validated and encoded by whoever stores them.
 */
export const encodedEnvelope = (envelope: Envelope): EncodedEnvelope | undefined =>
  typeof envelope === "object" && envelope !== null ? BuiltEnvelope.encodedOf(envelope) : undefined

/**
 * True exactly once for an envelope whose id {@link makeEnvelope} generated, and false for
 * every other envelope and every later call. A store that is told true may write the event
 * without guarding against an existing row of that id: none can exist, because the id was
 * minted in this process (strictly increasing, 62 random bits per millisecond) and this is
 * its first write anywhere. A caller-chosen id, an envelope decoded or copied, or the same
 * envelope appended again (a retried transaction, a second store) must keep the guard:
 * re-publishing an id is a no-op, never a unique violation in the caller's transaction.
 *
 * Claim only after every check of the batch has passed: a claim is not given back.
 *
 * @example
 * ```ts
 * import { claimFreshId, makeEnvelope } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * const event = Effect.runSync(makeEnvelope({ tenant: "acme", channel: "orders", type: "order.paid" }))
 * console.log(claimFreshId(event)) // true: no store has written this id yet
 * console.log(claimFreshId(event)) // false: every later write keeps the duplicate-id guard
 * ```
 */
export const claimFreshId = (envelope: Envelope): boolean =>
  typeof envelope === "object" && envelope !== null && BuiltEnvelope.claimFresh(envelope)

// id (a UUID), tenant and channel (safe names) and time (ISO) never need escaping, so the
// compact JSON of an envelope is these pieces around the encoded type, data and headers:
// byte for byte what JSON.stringify writes for the object in canonical order.
const assembleJson = (
  id: string,
  tenant: string,
  channel: string,
  type: string,
  data: string,
  headers: string,
  time: string,
): string =>
  `{"id":"${id}","tenant":"${tenant}","channel":"${channel}","type":${JSON.stringify(type)},"data":${data},"headers":${headers},"time":"${time}"}`

let lastMs = Number.NaN
let lastIso = ""

/**
 * The current time as an ISO-8601 string, formatted once per millisecond: events published
 * in the same millisecond share it.
 */
export const isoNow = (): string => {
  const ms = Date.now()
  if (ms !== lastMs) {
    lastMs = ms
    lastIso = new Date(ms).toISOString()
  }
  return lastIso
}

const noHeaders: Readonly<Record<string, string>> = Object.freeze({})

/**
 * The envelope as every transport stores it: compact JSON of exactly the stored fields in
 * their canonical order (a delivered event's `cursor` is not part of it).
 */
export const envelopeToJson = (envelope: Envelope): string =>
  encodedEnvelope(envelope)?.json ??
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

const invalidEvent = (reason: string, message: string) => new InvalidEvent({ reason, message })

/**
 * Synchronous core of {@link makeEnvelope}: the envelope, or the typed reason it was
 * refused. Validates and encodes each event exactly once.
 */
export const buildEnvelope = (
  input: EventInput,
  options: {
    readonly maxPayloadBytes?: number
    readonly now?: Date
    /** The ISO-8601 time to stamp (wins over `now`; default: the current time). */
    readonly time?: string
  } = {},
): Envelope | InvalidName | InvalidEvent | PayloadTooLarge => {
  if (typeof input !== "object" || input === null) {
    return invalidEvent("not-an-object", "an event must be an object")
  }
  const tenant = validateName("tenant", input.tenant)
  if (typeof tenant !== "string") return tenant
  const channel = validateName("channel", input.channel)
  if (typeof channel !== "string") return channel
  if (typeof input.type !== "string" || input.type.length === 0 || input.type.length > maxTypeLength) {
    return invalidEvent(
      "type",
      `event type must be a non-empty string of at most ${maxTypeLength} characters`,
    )
  }
  const data = input.data === undefined ? null : input.data
  if (!isJsonFast(data, 0)) {
    const nonJson = findNonJson(data, "data", new Set())
    if (nonJson !== undefined) return invalidEvent("data", `event data must be JSON: ${nonJson}`)
  }
  let headers = noHeaders
  let headersJson = "{}"
  if (input.headers !== undefined) {
    if (typeof input.headers !== "object" || input.headers === null || Array.isArray(input.headers)) {
      return invalidEvent("headers", "headers must be an object of strings")
    }
    const copy: Record<string, string> = {}
    for (const [k, v] of Object.entries(input.headers)) {
      if (typeof v !== "string")
        return invalidEvent("headers", `header ${JSON.stringify(k)} must be a string`)
      copy[k] = v
    }
    headers = Object.freeze(copy)
    headersJson = JSON.stringify(copy)
  }
  let id: string
  const generated = input.id === undefined
  if (generated) id = uuidv7()
  else if (typeof input.id === "string" && isUuidv7(input.id)) id = input.id
  else return invalidEvent("id", "id must be a lower-case UUIDv7 string")
  const time = options.time ?? (options.now === undefined ? isoNow() : options.now.toISOString())
  // Validated above, so this cannot throw: every value is a plain, acyclic JSON value.
  const dataJson = JSON.stringify(data)
  const json = assembleJson(id, tenant, channel, input.type, dataJson, headersJson, time)
  const limit = options.maxPayloadBytes ?? defaultMaxPayloadBytes
  // A UTF-16 code unit is at most 3 bytes of UTF-8: only a string that could be over the
  // limit is measured.
  if (json.length * 3 > limit) {
    const bytes = Buffer.byteLength(json, "utf8")
    if (bytes > limit) {
      return new PayloadTooLarge({
        bytes,
        limit,
        message: `event is ${bytes} bytes encoded; the limit is ${limit}`,
      })
    }
  }
  return new BuiltEnvelope(
    id,
    tenant,
    channel,
    input.type,
    data as Json,
    headers,
    time,
    {
      json,
      data: dataJson,
      headers: headersJson,
    },
    generated,
  )
}

/**
 * Validates a producer's input and builds its envelope: names checked, data proven to be
 * JSON, headers proven to be strings, size within `maxPayloadBytes`. Fails without side
 * effects, so a bad event in a batch changes nothing.
 */
export const makeEnvelope = (
  input: EventInput,
  options: { readonly maxPayloadBytes?: number; readonly now?: Date } = {},
): Effect.Effect<Envelope, InvalidName | InvalidEvent | PayloadTooLarge> =>
  Effect.suspend(() => {
    const result = buildEnvelope(input, options)
    return isEnvelopeError(result) ? Effect.fail(result) : Effect.succeed(result)
  })

/** True for the error side of {@link buildEnvelope} (an envelope has no `_tag`). */
export const isEnvelopeError = (
  u: Envelope | InvalidName | InvalidEvent | PayloadTooLarge,
): u is InvalidName | InvalidEvent | PayloadTooLarge => "_tag" in u

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
