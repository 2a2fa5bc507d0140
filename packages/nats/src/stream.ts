import { type BusError, ConfigError } from "@bus/core"
import {
  DiscardPolicy,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamInfo,
  type StreamUpdateConfig,
} from "@nats-io/jetstream"
import { millis, nanos } from "@nats-io/transport-node"
import { Effect } from "effect"
import { toBusError } from "./errors.js"
import { deadLetterStreamSubject, streamSubject } from "./names.js"
import type { ResolvedOptions } from "./options.js"

/**
 * Creates the event stream and the dead-letter stream, or adopts them when they exist.
 * An adopted stream is changed only where the change cannot lose data (adding our
 * subjects, widening the duplicate window, raising limits); every other difference is
 * logged and left to the operator.
 *
 * @module
 */

type WantedStream = Pick<
  StreamConfig,
  | "name"
  | "subjects"
  | "retention"
  | "storage"
  | "max_age"
  | "max_bytes"
  | "max_msgs"
  | "max_msg_size"
  | "num_replicas"
  | "duplicate_window"
  | "discard"
  | "description"
>

const eventStreamConfig = (o: ResolvedOptions): WantedStream => ({
  name: o.streamName,
  subjects: [streamSubject(o.prefix)],
  retention: RetentionPolicy.Limits,
  storage: o.storage === "memory" ? StorageType.Memory : StorageType.File,
  max_age: nanos(o.maxAgeMs),
  max_bytes: o.maxBytes,
  max_msgs: -1,
  max_msg_size: -1,
  num_replicas: o.replicas,
  duplicate_window: nanos(o.duplicateWindowMs),
  discard: DiscardPolicy.Old,
  description: `@bus events: ${streamSubject(o.prefix)}`,
})

const deadLetterStreamConfig = (o: ResolvedOptions): WantedStream => ({
  name: o.deadLetterStreamName,
  subjects: [deadLetterStreamSubject(o.prefix)],
  retention: RetentionPolicy.Limits,
  storage: o.storage === "memory" ? StorageType.Memory : StorageType.File,
  max_age: nanos(o.deadLetterMaxAgeMs),
  max_bytes: -1,
  max_msgs: -1,
  max_msg_size: -1,
  num_replicas: o.replicas,
  duplicate_window: nanos(o.duplicateWindowMs),
  discard: DiscardPolicy.Old,
  description: `@bus dead letters: ${deadLetterStreamSubject(o.prefix)}`,
})

/** JetStream error code: a stream of that name exists (another process created it first). */
const streamNameInUse = 10058

export const isNotFound = (error: unknown): boolean =>
  error instanceof Error && (error.name === "StreamNotFoundError" || /stream not found/i.test(error.message))

const apiCode = (error: unknown): number | undefined => {
  const code = (error as { code?: unknown })?.code
  return typeof code === "number" ? code : undefined
}

const ms = (n: number): string => (n === 0 ? "unlimited" : `${millis(n)} ms`)
const limit = (n: number): string => (n <= 0 ? "unlimited" : String(n))
/** For limits where 0 or -1 mean "none": is `a` at least as permissive as `b`? */
const atLeast = (a: number, b: number): boolean => (a <= 0 ? true : b <= 0 ? false : a >= b)

/**
 * Works out the safe changes from `have` towards `want`, and describes the differences it
 * leaves alone. `explicit` says which limits the user set (others are not enforced on an
 * adopted stream).
 */
const reconcile = (
  have: StreamConfig,
  want: WantedStream,
  explicit: ResolvedOptions["explicit"],
): { readonly update: Partial<StreamUpdateConfig>; readonly notes: Array<string> } | ConfigError => {
  const update: Partial<StreamUpdateConfig> = {}
  const notes: Array<string> = []
  if (have.retention !== RetentionPolicy.Limits) {
    return new ConfigError({
      message: `nats: stream ${have.name} uses retention "${have.retention}"; @bus needs "limits" (replay, several groups and subscriptions read the same events)`,
    })
  }
  const subjects = have.subjects ?? []
  const missing = want.subjects.filter((s) => !subjects.includes(s))
  if (missing.length > 0) update.subjects = [...subjects, ...missing]
  if (have.storage !== want.storage && explicit.storage) {
    notes.push(`storage is ${have.storage}, configured ${want.storage} (storage cannot change; left as is)`)
  }
  if (have.num_replicas !== want.num_replicas && explicit.replicas) {
    notes.push(`replicas are ${have.num_replicas}, configured ${want.num_replicas} (left to the operator)`)
  }
  let maxAge = have.max_age
  if (explicit.maxAge && have.max_age !== want.max_age) {
    if (atLeast(want.max_age, have.max_age)) {
      update.max_age = want.max_age
      maxAge = want.max_age
    } else {
      notes.push(
        `max_age is ${ms(have.max_age)}, configured ${ms(want.max_age)} (lowering it deletes events; left as is)`,
      )
    }
  }
  if (explicit.maxBytes && have.max_bytes !== want.max_bytes) {
    if (atLeast(want.max_bytes, have.max_bytes)) update.max_bytes = want.max_bytes
    else {
      notes.push(
        `max_bytes is ${limit(have.max_bytes)}, configured ${limit(want.max_bytes)} (lowering it deletes events; left as is)`,
      )
    }
  }
  if (have.duplicate_window < want.duplicate_window) {
    if (maxAge > 0 && want.duplicate_window > maxAge) {
      notes.push(
        `duplicate_window is ${ms(have.duplicate_window)}, below the wanted ${ms(want.duplicate_window)}, and max_age ${ms(maxAge)} keeps it from growing: relay re-sends after that long may store duplicates`,
      )
    } else update.duplicate_window = want.duplicate_window
  } else if (have.duplicate_window > want.duplicate_window && explicit.duplicateWindow) {
    notes.push(
      `duplicate_window is ${ms(have.duplicate_window)}, above the configured ${ms(want.duplicate_window)} (kept: shrinking it weakens dedupe)`,
    )
  }
  return { update, notes }
}

/** Creates the stream `want` or adopts the existing one. */
const ensureOne = (
  jsm: JetStreamManager,
  want: WantedStream,
  explicit: ResolvedOptions["explicit"],
): Effect.Effect<{ readonly info: StreamInfo; readonly created: boolean }, BusError> =>
  Effect.gen(function* () {
    for (let attempt = 0; ; attempt++) {
      const existing = yield* Effect.tryPromise({
        try: () => jsm.streams.info(want.name),
        catch: (e) => e,
      }).pipe(
        Effect.map((info): StreamInfo | undefined => info),
        Effect.catch((e) =>
          isNotFound(e) ? Effect.succeed(undefined) : Effect.fail(toBusError(e, `stream info ${want.name}`)),
        ),
      )
      if (existing === undefined) {
        const created = yield* Effect.tryPromise({
          try: () => jsm.streams.add({ ...want }),
          catch: (e) => e,
        }).pipe(
          Effect.map((info): StreamInfo | undefined => info),
          Effect.catch((e) =>
            // Another process created it between our info and add: adopt theirs.
            apiCode(e) === streamNameInUse && attempt === 0
              ? Effect.succeed(undefined)
              : Effect.fail(toBusError(e, `create stream ${want.name}`)),
          ),
        )
        if (created === undefined) continue
        yield* Effect.logInfo(
          `nats: created stream ${want.name} (${want.subjects.join(", ")}; ${created.config.storage}, R${created.config.num_replicas}, duplicate window ${ms(created.config.duplicate_window)})`,
        )
        return { info: created, created: true }
      }
      const plan = reconcile(existing.config, want, explicit)
      if (plan instanceof ConfigError) return yield* plan
      for (const note of plan.notes) yield* Effect.logWarning(`nats: adopted stream ${want.name}: ${note}`)
      if (Object.keys(plan.update).length === 0) return { info: existing, created: false }
      const updated = yield* Effect.tryPromise({
        try: () => jsm.streams.update(want.name, plan.update),
        catch: (e) => toBusError(e, `update stream ${want.name}`),
      })
      yield* Effect.logInfo(
        `nats: adopted stream ${want.name}, updated ${Object.keys(plan.update).join(", ")}`,
      )
      return { info: updated, created: false }
    }
  })

/**
 * The event stream and dead-letter stream, created or adopted; `created` says whether this
 * call created the event stream (it did not exist: a first start, or one lost while no
 * process of this bus was running, which the relay then repairs from the outbox).
 */
export const ensureStreams = (
  jsm: JetStreamManager,
  o: ResolvedOptions,
): Effect.Effect<
  {
    readonly events: { readonly info: StreamInfo; readonly created: boolean }
    readonly deadLetters: { readonly info: StreamInfo; readonly created: boolean }
  },
  BusError
> =>
  Effect.all({
    events: ensureOne(jsm, eventStreamConfig(o), o.explicit),
    deadLetters: ensureOne(jsm, deadLetterStreamConfig(o), o.explicit),
  })
