import type { DeliveredEvent } from "./envelope.js"
import { InvalidEvent } from "./errors.js"
import { validateName } from "./name.js"

/**
 * Typed channels: a channel declared with one schema per event type, through the Standard
 * Schema interface (https://standardschema.dev), so Effect Schema (via
 * `Schema.toStandardSchemaV1`), zod and valibot schemas all work and none is a dependency.
 *
 * The wire form of an event's `data` is the schema's *input* (for Effect Schema, the encoded
 * side): `publish` takes it, checks it against the schema and stores it as given. Receivers
 * (`subscribe`, `consume`) check what they read and get the schema's *output* (the decoded
 * side). Standard Schema has no encode direction, which is why the producer passes the wire
 * form: a schema that decodes an ISO string into a `Date` is published with the string.
 *
 * @module
 */

/**
 * The Standard Schema v1 interface, vendored (types only) from `@standard-schema/spec` so
 * that no schema library is a dependency of @bus/core.
 */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly "~standard": StandardSchemaV1.Props<Input, Output>
}

export declare namespace StandardSchemaV1 {
  /** The Standard Schema properties. */
  export interface Props<Input = unknown, Output = Input> {
    readonly version: 1
    readonly vendor: string
    readonly validate: (value: unknown) => Result<Output> | Promise<Result<Output>>
    readonly types?: Types<Input, Output> | undefined
  }
  export type Result<Output> = SuccessResult<Output> | FailureResult
  export interface SuccessResult<Output> {
    readonly value: Output
    readonly issues?: undefined
  }
  export interface FailureResult {
    readonly issues: ReadonlyArray<Issue>
  }
  export interface Issue {
    readonly message: string
    readonly path?: ReadonlyArray<PropertyKey | PathSegment> | undefined
  }
  export interface PathSegment {
    readonly key: PropertyKey
  }
  export interface Types<Input = unknown, Output = Input> {
    readonly input: Input
    readonly output: Output
  }
  export type InferInput<Schema extends StandardSchemaV1> = NonNullable<Schema["~standard"]["types"]>["input"]
  export type InferOutput<Schema extends StandardSchemaV1> = NonNullable<
    Schema["~standard"]["types"]
  >["output"]
}

/** One schema per event type of a channel: `{ "order.paid": OrderPaid, … }`. */
export type EventSchemas = { readonly [type: string]: StandardSchemaV1 }

/** A channel declared with {@link defineChannel}: its name and the schema of each event type. */
export interface Channel<Name extends string = string, Events extends EventSchemas = EventSchemas> {
  /** Marks a channel object, so a channel is told apart from a name at run time. */
  readonly "~bus": "channel"
  readonly name: Name
  readonly events: Events
}

/** Any typed channel. */
export type AnyChannel = Channel<string, EventSchemas>

/** What a request may name as its channel: a name (untyped) or a typed channel. */
export type ChannelRef = string | AnyChannel

type EventsOf<C> = C extends Channel<string, infer Events> ? Events : never

/**
 * The events a subscriber or handler of `C` receives: a union discriminated by `type`, each
 * with `data` of that type's schema output. For a channel given by name, {@link DeliveredEvent}.
 */
export type ChannelEvent<C extends ChannelRef> = C extends AnyChannel
  ? {
      readonly [T in keyof EventsOf<C> & string]: Omit<DeliveredEvent, "channel" | "type" | "data"> & {
        readonly channel: C["name"]
        readonly type: T
        readonly data: StandardSchemaV1.InferOutput<EventsOf<C>[T]>
      }
    }[keyof EventsOf<C> & string]
  : DeliveredEvent

/** The `type` / `data` pairs a producer may publish on `C` (data in the schema's input form). */
export type ChannelPayload<C extends AnyChannel> = {
  readonly [T in keyof EventsOf<C> & string]: {
    readonly type: T
    readonly data: StandardSchemaV1.InferInput<EventsOf<C>[T]>
  }
}[keyof EventsOf<C> & string]

/**
 * An event to publish on the typed channel `C`: like `EventInput`, with `channel` the channel
 * object and `type` / `data` checked against its schemas.
 */
export type ChannelEventInput<C extends AnyChannel> = C extends AnyChannel
  ? {
      readonly tenant: string
      readonly channel: C
      readonly headers?: Readonly<Record<string, string>>
      /** Optional caller-chosen UUIDv7. */
      readonly id?: string
    } & ChannelPayload<C>
  : never

/**
 * Declares a channel with a schema per event type. The name is checked against the naming
 * rule here (a bad one throws `InvalidName` when the module loads, not at the first publish).
 *
 * @example
 * ```ts
 * import { defineChannel } from "@bus/core"
 * import { Schema } from "effect"
 *
 * const OrderPaid = Schema.Struct({ orderId: Schema.String, total: Schema.Number })
 * const OrderShipped = Schema.Struct({ orderId: Schema.String, carrier: Schema.String })
 * export const orders = defineChannel("orders", {
 *   "order.paid": Schema.toStandardSchemaV1(OrderPaid),
 *   "order.shipped": Schema.toStandardSchemaV1(OrderShipped),
 * })
 * ```
 */
export const defineChannel = <const Name extends string, const Events extends EventSchemas>(
  name: Name,
  events: Events,
): Channel<Name, Events> => {
  const checked = validateName("channel", name)
  if (typeof checked !== "string") throw checked
  if (typeof events !== "object" || events === null) {
    throw new TypeError(`defineChannel(${JSON.stringify(name)}): give an object of schemas per event type`)
  }
  for (const [type, schema] of Object.entries(events)) {
    if (typeof (schema as Partial<StandardSchemaV1> | undefined)?.["~standard"]?.validate !== "function") {
      throw new TypeError(
        `defineChannel(${JSON.stringify(name)}): the schema of ${JSON.stringify(type)} is not a Standard Schema ` +
          "(zod and valibot schemas are; wrap an Effect Schema in Schema.toStandardSchemaV1)",
      )
    }
  }
  return Object.freeze({ "~bus": "channel", name, events: Object.freeze({ ...events }) })
}

/** True when `u` is a channel from {@link defineChannel}. */
export const isChannel = (u: unknown): u is AnyChannel =>
  typeof u === "object" && u !== null && (u as { "~bus"?: unknown })["~bus"] === "channel"

/** The channel's name, whether given by name or as a typed channel. */
export const channelName = (channel: ChannelRef): string => (isChannel(channel) ? channel.name : channel)

const pathOf = (issue: StandardSchemaV1.Issue): string =>
  (issue.path ?? [])
    .map((p) => {
      const key = typeof p === "object" && p !== null ? p.key : p
      return typeof key === "number" ? `[${key}]` : `.${String(key)}`
    })
    .join("")

/** The refusal of `data` for one event type: names the type and every issue with its path. */
const schemaError = (
  channel: AnyChannel,
  type: string,
  issues: ReadonlyArray<StandardSchemaV1.Issue>,
): InvalidEvent =>
  new InvalidEvent({
    reason: "schema",
    message: `event ${JSON.stringify(type)} of channel ${JSON.stringify(channel.name)} does not match its schema: ${issues
      .slice(0, 10)
      .map((i) => `data${pathOf(i)}: ${i.message}`)
      .join("; ")}${issues.length > 10 ? ` (and ${issues.length - 10} more)` : ""}`,
  })

/** A checked value, or why it was refused. */
export type Checked<A> = { readonly value: A } | { readonly error: InvalidEvent }

/**
 * Checks `data` of an event of `type` against the channel's schema. Synchronous schemas
 * answer synchronously; an async one (a refinement that awaits) answers with a Promise, which
 * every caller here awaits (publish and the receivers all run asynchronously anyway).
 */
export const checkData = (
  channel: AnyChannel,
  type: string,
  data: unknown,
): Checked<unknown> | Promise<Checked<unknown>> => {
  const schema = Object.hasOwn(channel.events, type) ? channel.events[type] : undefined
  if (schema === undefined) {
    return {
      error: new InvalidEvent({
        reason: "schema",
        message: `channel ${JSON.stringify(channel.name)} declares no event type ${JSON.stringify(type)} (it has ${Object.keys(
          channel.events,
        )
          .map((t) => JSON.stringify(t))
          .join(", ")})`,
      }),
    }
  }
  const settle = (result: StandardSchemaV1.Result<unknown>): Checked<unknown> =>
    result.issues === undefined
      ? { value: result.value }
      : { error: schemaError(channel, type, result.issues) }
  let result: StandardSchemaV1.Result<unknown> | Promise<StandardSchemaV1.Result<unknown>>
  try {
    result = schema["~standard"].validate(data)
  } catch (error) {
    // A schema that throws (a bug in a refinement) refuses the value rather than the call.
    return { error: schemaError(channel, type, [{ message: `the schema threw: ${String(error)}` }]) }
  }
  if (result instanceof Promise) {
    return result.then(settle, (error: unknown) => ({
      error: schemaError(channel, type, [{ message: `the schema threw: ${String(error)}` }]),
    }))
  }
  return settle(result)
}

/**
 * The last check of each delivered event object: on the outbox transports every local
 * subscriber of an address is handed the same event objects (one shared page), so N
 * subscribers of one typed channel check each event once, not N times.
 */
const lastCheck = new WeakMap<
  object,
  { readonly channel: AnyChannel; readonly result: Checked<DeliveredEvent> }
>()

/**
 * A delivered event checked against its typed channel: the event with `data` replaced by the
 * schema's output, or the refusal. Events of another channel's name are refused too (a
 * typed request only ever reads its own channel, so that is a bug, not data).
 */
export const checkDelivered = (
  channel: AnyChannel,
  event: DeliveredEvent,
): Checked<DeliveredEvent> | Promise<Checked<DeliveredEvent>> => {
  const cached = lastCheck.get(event)
  if (cached !== undefined && cached.channel === channel) return cached.result
  const checked = checkData(channel, event.type, event.data)
  const toEvent = (c: Checked<unknown>): Checked<DeliveredEvent> =>
    "error" in c
      ? c
      : // The schema's output may differ from the stored JSON (defaults, transforms); the
        // event object is shared with other subscribers, so it is copied, never edited.
        { value: c.value === event.data ? event : { ...event, data: c.value as DeliveredEvent["data"] } }
  if (checked instanceof Promise) return checked.then(toEvent)
  const result = toEvent(checked)
  lastCheck.set(event, { channel, result })
  return result
}

/** Told about a received event of a typed channel that fails its schema (it is not delivered). */
export type OnInvalidEvent = (event: DeliveredEvent, error: InvalidEvent) => void

/**
 * A page of delivered events checked against `channel`: those that pass (with `data` the
 * schema's output), in order; each one that fails is handed to `onInvalid` and left out.
 * When every event passes unchanged the same array comes back (no copy).
 */
export const checkPage = (
  channel: AnyChannel,
  events: ReadonlyArray<DeliveredEvent>,
  onInvalid: (event: DeliveredEvent, error: InvalidEvent) => void,
): ReadonlyArray<DeliveredEvent> | Promise<ReadonlyArray<DeliveredEvent>> => {
  const checks = events.map((event) => checkDelivered(channel, event))
  const keep = (settled: ReadonlyArray<Checked<DeliveredEvent>>): ReadonlyArray<DeliveredEvent> => {
    let same = true
    for (let i = 0; i < settled.length; i++) {
      const c = settled[i]!
      if ("error" in c || c.value !== events[i]) same = false
    }
    if (same) return events
    const kept: Array<DeliveredEvent> = []
    for (let i = 0; i < settled.length; i++) {
      const c = settled[i]!
      if ("error" in c) onInvalid(events[i]!, c.error)
      else kept.push(c.value)
    }
    return kept
  }
  return checks.some((c) => c instanceof Promise)
    ? Promise.all(checks).then(keep)
    : keep(checks as Array<Checked<DeliveredEvent>>)
}

/** The warning logged for a received event that fails its schema, when no `onInvalid` is given. */
export const invalidEventWarning = (event: DeliveredEvent, error: InvalidEvent): string =>
  `skipping event ${event.id} at cursor ${event.cursor}: ${error.message}`
