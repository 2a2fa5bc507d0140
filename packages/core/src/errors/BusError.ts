import { Schema } from "effect"

/**
 * Every failure @bus reports is one of these tagged errors. Each member says
 * whether retrying the same call can help (`retryable`), so callers and the
 * relay decide between backing off and giving up without inspecting messages.
 *
 * @module
 */

/** A tenant or channel name broke the naming rule; `rule` names which one. */
export class InvalidName extends Schema.TaggedError<InvalidName>()("InvalidName", {
  field: Schema.Literals(["tenant", "channel", "group"]),
  value: Schema.String,
  rule: Schema.Literals([
    "empty",
    "too-long",
    "invalid-character",
    "invalid-start",
    "not-a-string",
    "wildcard",
  ]),
  message: Schema.String,
}) {
  /** Retrying with the same name fails the same way. */
  readonly retryable = false
}

/** An event to publish was malformed (missing type, non-JSON data, bad headers). */
export class InvalidEvent extends Schema.TaggedError<InvalidEvent>()("InvalidEvent", {
  reason: Schema.String,
  message: Schema.String,
}) {
  readonly retryable = false
}

/** An event's encoded size is over the configured or transport limit. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  bytes: Schema.Number,
  limit: Schema.Number,
  message: Schema.String,
}) {
  readonly retryable = false
}

/** `publish` was given something that is not an open transaction of the configured outbox. */
export class NotInTransaction extends Schema.TaggedError<NotInTransaction>()("NotInTransaction", {
  message: Schema.String,
}) {
  readonly retryable = false
}

/** A cursor is malformed, from another transport, epoch or address, or older than retention: resume is impossible. */
export class CursorInvalid extends Schema.TaggedError<CursorInvalid>()("CursorInvalid", {
  cursor: Schema.String,
  reason: Schema.Literals(["malformed", "expired", "foreign", "address"]),
  message: Schema.String,
}) {
  readonly retryable = false
}

/** Configuration is incomplete or contradictory. */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  message: Schema.String,
}) {
  readonly retryable = false
}

/** The server or broker could not be reached or dropped the connection; trying again later can help. */
export class TransportUnavailable extends Schema.TaggedError<TransportUnavailable>()("TransportUnavailable", {
  transport: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {
  readonly retryable = true
}

/** The server answered with an error (a failed query, a rejected publish). */
export class TransportFailure extends Schema.TaggedError<TransportFailure>()("TransportFailure", {
  transport: Schema.String,
  message: Schema.String,
  retryable: Schema.Boolean,
  cause: Schema.optional(Schema.Defect()),
}) {}

/** A consumer handler threw or rejected; the event is retried and then dead-lettered. */
export class HandlerFailed extends Schema.TaggedError<HandlerFailed>()("HandlerFailed", {
  eventId: Schema.String,
  attempt: Schema.Number,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {
  readonly retryable = true
}

/** The bus, subscription or consumer was closed while the call was in flight. */
export class BusClosed extends Schema.TaggedError<BusClosed>()("BusClosed", {
  message: Schema.String,
}) {
  readonly retryable = false
}

/** The one error family of @bus. */
export type BusError =
  | InvalidName
  | InvalidEvent
  | PayloadTooLarge
  | NotInTransaction
  | CursorInvalid
  | ConfigError
  | TransportUnavailable
  | TransportFailure
  | HandlerFailed
  | BusClosed

const busErrorTags: ReadonlySet<string> = new Set([
  "InvalidName",
  "InvalidEvent",
  "PayloadTooLarge",
  "NotInTransaction",
  "CursorInvalid",
  "ConfigError",
  "TransportUnavailable",
  "TransportFailure",
  "HandlerFailed",
  "BusClosed",
])

/** True when `u` is a member of the {@link BusError} family. */
export const isBusError = (u: unknown): u is BusError =>
  typeof u === "object" && u !== null && busErrorTags.has((u as { _tag?: unknown })._tag as string)
