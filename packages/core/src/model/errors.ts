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
  /** The same event is malformed the same way next time. */
  readonly retryable = false
}

/**
 * An event's encoded size is over the configured limit or what the transport or broker
 * carries (e.g. the NATS server's `max_payload`). Every transport reports this condition
 * with this error, whether the bus or the broker found it.
 */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  bytes: Schema.Number,
  limit: Schema.Number,
  message: Schema.String,
}) {
  /** The event does not shrink: it fails the same way until it is made smaller. */
  readonly retryable = false
}

/** `publish` was given something that is not an open transaction of the configured outbox. */
export class NotInTransaction extends Schema.TaggedError<NotInTransaction>()("NotInTransaction", {
  message: Schema.String,
}) {
  /** The same value is not a transaction next time either: pass the open one. */
  readonly retryable = false
}

/** A cursor is malformed, from another transport, epoch or address, or older than retention: resume is impossible. */
export class CursorInvalid extends Schema.TaggedError<CursorInvalid>()("CursorInvalid", {
  cursor: Schema.String,
  reason: Schema.Literals(["malformed", "expired", "foreign", "address"]),
  message: Schema.String,
}) {
  /** No reason gets better with time: resume from another position ("beginning", "now", a newer cursor). */
  readonly retryable = false
}

/**
 * Configuration is incomplete, contradictory or refused by the server: wrong credentials, a
 * missing schema, an option the server rejects.
 */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  message: Schema.String,
}) {
  /** Only a configuration change fixes it. */
  readonly retryable = false
}

/** The server or broker could not be reached or dropped the connection; trying again later can help. */
export class TransportUnavailable extends Schema.TaggedError<TransportUnavailable>()("TransportUnavailable", {
  transport: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect()),
}) {
  /** Connection refused, dropped, or timed out: the same call can succeed once the server is back. */
  readonly retryable = true
}

/**
 * The server answered with an error (a failed query, a rejected publish). Whether retrying
 * helps depends on the answer, so it is a field: `true` for transient conflicts (serialization
 * failure, deadlock, a busy or read-only replica), `false` for what the same call meets again.
 */
export class TransportFailure extends Schema.TaggedError<TransportFailure>()("TransportFailure", {
  transport: Schema.String,
  message: Schema.String,
  retryable: Schema.Boolean,
  cause: Schema.optional(Schema.Defect()),
}) {}

/** The bus, subscription or consumer was closed while the call was in flight. */
export class BusClosed extends Schema.TaggedError<BusClosed>()("BusClosed", {
  message: Schema.String,
}) {
  /** A closed bus stays closed: make a new one. */
  readonly retryable = false
}

/**
 * Every member, keyed by its tag: the one place the family is listed. The union type and
 * {@link isBusError} are derived from it, so a new member is added here and nowhere else.
 * (A consumer handler's failure is not a member: it never reaches a caller. The consumer
 * retries the event and then dead-letters it with the failure as its reason.)
 */
const busErrors = {
  InvalidName,
  InvalidEvent,
  PayloadTooLarge,
  NotInTransaction,
  CursorInvalid,
  ConfigError,
  TransportUnavailable,
  TransportFailure,
  BusClosed,
} as const

/**
 * The one error family of @bus: `InvalidName`, `InvalidEvent`, `PayloadTooLarge`,
 * `NotInTransaction`, `CursorInvalid`, `ConfigError`, `TransportUnavailable`,
 * `TransportFailure`, `BusClosed`. Each says in `retryable` whether the same call can succeed
 * later.
 */
export type BusError = InstanceType<(typeof busErrors)[keyof typeof busErrors]>

/** The tags of the family, for code that must tell a bus error from any other tagged value. */
const busErrorTags: ReadonlySet<BusError["_tag"]> = new Set(Object.keys(busErrors) as Array<BusError["_tag"]>)

/** True when `u` is a member of the {@link BusError} family. */
export const isBusError = (u: unknown): u is BusError =>
  typeof u === "object" && u !== null && busErrorTags.has((u as { _tag?: unknown })._tag as BusError["_tag"])
