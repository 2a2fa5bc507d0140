import { Context, Effect, Layer } from "effect"
import { type BusError, ConfigError } from "../model/errors.js"
import { DeadLetterStore } from "./deadLetterStore.js"
import { GroupStore } from "./groupStore.js"
import { OutboxReader } from "./outboxReader.js"
import { OutboxRetention } from "./outboxRetention.js"
import { OutboxWriter } from "./outboxWriter.js"
import { OutboxRelay, type RelayLog } from "./relayLog.js"

/**
 * The outbox: the source of truth for every transport, as six small services by concern.
 * Producers append inside their own transaction ({@link OutboxWriter}); readers see only
 * committed events ({@link OutboxReader}); relays read it as a partitioned log to forward
 * rows to a broker ({@link OutboxRelay}); consumer groups keep their positions and inboxes in
 * it ({@link GroupStore}); events given up on are parked ({@link DeadLetterStore}); old rows
 * are pruned ({@link OutboxRetention}). Each part of the SDK requires only the services it
 * uses, so a new database starts with the writer and the reader ({@link OutboxCore}) and adds
 * the rest when it needs groups or brokers (docs/new-transport.md).
 *
 * One implementation per database (`@bus/postgres-notify` for Postgres, the in-memory one
 * in core), each giving one Layer that provides every service it implements. The core never
 * imports a database driver.
 *
 * @module
 */

// One module to import the whole contract from: each service keeps its own file.
export * from "./deadLetterStore.js"
export * from "./groupStore.js"
export * from "./outboxReader.js"
export * from "./outboxRetention.js"
export * from "./outboxWriter.js"
export * from "./relayLog.js"

/** What every outbox provides: enough for `publish` and `subscribe` on its own transport. */
export type OutboxCore = OutboxWriter | OutboxReader

/** Every service of the outbox contract: what consumer groups, dead letters and brokers (the relay) add. */
export type OutboxServices = OutboxCore | OutboxRelay | GroupStore | DeadLetterStore | OutboxRetention

type WriterShape = OutboxWriter["Service"]
type ReaderShape = OutboxReader["Service"]
type GroupStoreShape = GroupStore["Service"]
type DeadLetterStoreShape = DeadLetterStore["Service"]
type RetentionShape = OutboxRetention["Service"]

/**
 * A store that implements every service as one record (the Postgres and in-memory outboxes
 * do; so do tests that wrap one), for {@link outboxLayer}.
 */
export interface CompleteOutbox
  extends WriterShape,
    ReaderShape,
    GroupStoreShape,
    DeadLetterStoreShape,
    RetentionShape {
  /** The relay's side (see {@link RelayLog}). */
  readonly relay: RelayLog
}

/** One implementation of each service of the outbox contract, by concern. */
export interface OutboxParts {
  readonly writer: WriterShape
  readonly reader: ReaderShape
  readonly relay: RelayLog
  readonly groups: GroupStoreShape
  readonly deadLetters: DeadLetterStoreShape
  readonly retention: RetentionShape
}

/** The services of a {@link CompleteOutbox} record, each its own part. */
export const partsOf = (store: CompleteOutbox): OutboxParts => ({
  writer: store,
  reader: store,
  relay: store.relay,
  groups: store,
  deadLetters: store,
  retention: store,
})

/** Every service of the outbox contract in one context, from its parts. */
export const outboxContext = (parts: OutboxParts): Context.Context<OutboxServices> =>
  Context.make(OutboxWriter, parts.writer).pipe(
    Context.add(OutboxReader, parts.reader),
    Context.add(OutboxRelay, parts.relay),
    Context.add(GroupStore, parts.groups),
    Context.add(DeadLetterStore, parts.deadLetters),
    Context.add(OutboxRetention, parts.retention),
  )

/**
 * One layer providing every service of a {@link CompleteOutbox}.
 *
 * @example
 * ```ts
 * import { memoryOutbox } from "@bus/core"
 * import { outboxLayer } from "@bus/core/adapter"
 * import { Effect } from "effect"
 *
 * const outbox = memoryOutbox()
 * // The same store with a relay log that reports no backlog (say, in a test).
 * const layer = outboxLayer({ ...outbox.store, relay: { ...outbox.store.relay, backlog: Effect.succeed(0) } })
 * ```
 */
export const outboxLayer = (store: CompleteOutbox): Layer.Layer<OutboxServices> =>
  Layer.succeedContext(outboxContext(partsOf(store)))

const optionalServices: ReadonlyArray<readonly [Context.Key<unknown, unknown>, string]> = [
  [OutboxRelay, "OutboxRelay (the relay log)"],
  [GroupStore, "GroupStore"],
  [DeadLetterStore, "DeadLetterStore"],
  [OutboxRetention, "OutboxRetention"],
]

/**
 * The services of {@link OutboxServices} that `context` lacks, by name (empty for a
 * complete outbox). A layer's type names what it promises at least; this reads what it
 * provided.
 */
export const missingServices = (context: Context.Context<never>): ReadonlyArray<string> =>
  optionalServices.flatMap(([key, label]) => (Context.getOption(context, key)._tag === "None" ? [label] : []))

/**
 * `context` as a complete outbox's for `what` (the relay, a broker): fails with
 * `ConfigError` naming the services it lacks, so a bus over an outbox of a writer and a
 * reader that selects a broker says why at start instead of failing later.
 */
export const checkComplete = <R>(
  context: Context.Context<R>,
  what: string,
): Effect.Effect<Context.Context<R | OutboxServices>, ConfigError> => {
  const missing = missingServices(context as Context.Context<never>)
  return missing.length === 0
    ? Effect.succeed(context as Context.Context<R | OutboxServices>)
    : Effect.fail(
        new ConfigError({
          message: `${what} needs an outbox with every service of the outbox contract; this outbox lacks ${missing.join(", ")} (docs/new-transport.md)`,
        }),
      )
}

/** The outbox of `layer`, required complete for `what` (see {@link checkComplete}). */
export const requireComplete = (
  layer: Layer.Layer<OutboxCore, BusError>,
  what: string,
): Layer.Layer<OutboxServices, BusError> =>
  Layer.effectContext(Effect.flatMap(Layer.build(layer), (context) => checkComplete(context, what)))
