import {
  type Address,
  type BusError,
  decodeEnvelope,
  type Envelope,
  InvalidEvent,
  NotInTransaction,
} from "@bus/core"
import { Effect } from "effect"
import type { TransactionAdapter } from "../sql/adapter.js"
import { runQuery, type SqlExecutor } from "../sql/executor.js"
import { addressChannel, encodePayload, relayChannel, relayPayload } from "./channels.js"

/**
 * Transactional append: the batch insert and its wake-ups in one statement inside the
 * caller's transaction.
 *
 * Everything that Postgres could refuse is checked here first, because a failed
 * statement inside the caller's transaction aborts the whole transaction, business
 * rows included (invariant 6: bad input changes nothing).
 *
 * @module
 */

/** Who gets woken when an append commits. */
export type NotifyMode = "addresses" | "relay" | "both" | "none"

// jsonb rejects \u0000 and unpaired surrogates, text rejects NUL bytes. JSON.stringify
// writes both as escapes (an unpaired surrogate as \udXXX; a valid pair stays raw), so
// one scan of the encoded batch finds them; the look-behind skips escaped backslashes.
const unstorable = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const isoTime = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/

const checkEvent = (raw: unknown, index: number): Effect.Effect<Envelope, BusError> =>
  decodeEnvelope(raw).pipe(
    Effect.flatMap((event) => {
      if (!uuid.test(event.id)) {
        return Effect.fail(
          new InvalidEvent({ reason: "id", message: `event ${index}: id must be a lower-case UUID` }),
        )
      }
      if (!isoTime.test(event.time) || Number.isNaN(Date.parse(event.time))) {
        return Effect.fail(
          new InvalidEvent({ reason: "time", message: `event ${index}: time must be an ISO-8601 timestamp` }),
        )
      }
      if (unstorable.test(JSON.stringify(event))) {
        return Effect.fail(
          new InvalidEvent({
            reason: "data",
            message: `event ${index} holds a NUL character or an unpaired UTF-16 surrogate, which Postgres cannot store`,
          }),
        )
      }
      return Effect.succeed(event)
    }),
  )

/** Resolves `tx` with the first adapter that recognises it. */
export const openTransaction = (
  adapters: ReadonlyArray<TransactionAdapter>,
  tx: unknown,
): Effect.Effect<SqlExecutor, BusError> => {
  for (const adapter of adapters) {
    const opened = adapter.open(tx)
    if (opened !== undefined) return opened
  }
  const names = adapters.map((a) => a.name).join(", ")
  return Effect.fail(
    new NotInTransaction({
      message: `publish needs an open transaction of a supported driver (${names}); got ${tx === null ? "null" : typeof tx}`,
    }),
  )
}

/** Channels and payloads to NOTIFY for a batch: one per distinct address, and/or the relay channel. */
export const wakeUpsFor = (
  schema: string,
  mode: NotifyMode,
  addresses: Iterable<Address>,
): { readonly channels: Array<string>; readonly payloads: Array<string> } => {
  const channels: Array<string> = []
  const payloads: Array<string> = []
  if (mode === "addresses" || mode === "both") {
    const seen = new Set<string>()
    for (const a of addresses) {
      const payload = encodePayload(a)
      if (seen.has(payload)) continue
      seen.add(payload)
      channels.push(addressChannel(schema, a))
      payloads.push(payload)
    }
  }
  if (mode === "relay" || mode === "both") {
    channels.push(relayChannel(schema))
    payloads.push(relayPayload)
  }
  return { channels, payloads }
}

/** The NOTIFY parameter of the append and notify statements: a JSON array of [channel, payload] pairs. */
export const notifyParam = (channels: ReadonlyArray<string>, payloads: ReadonlyArray<string>): string =>
  JSON.stringify(channels.map((c, i) => [c, payloads[i] ?? ""]))

/** Appends `events` through `tx`: validate all, then one statement (insert + NOTIFY). */
export const append = (options: {
  readonly adapters: ReadonlyArray<TransactionAdapter>
  readonly schema: string
  readonly sql: string
  readonly notify: NotifyMode
  readonly tx: unknown
  readonly events: ReadonlyArray<Envelope>
  /** Called after an append that sent wake-ups inside the caller's transaction (the pressure monitor counts them). */
  readonly onNotified?: (() => void) | undefined
  /**
   * Called with the validated events once the transaction is open; true means the SDK owns
   * this transaction and sends its wake-ups after COMMIT, so the append sends none.
   */
  readonly deferNotify?: ((events: ReadonlyArray<Envelope>) => boolean) | undefined
}): Effect.Effect<void, BusError> =>
  Effect.gen(function* () {
    if (!Array.isArray(options.events)) {
      return yield* new InvalidEvent({ reason: "batch", message: "append needs an array of events" })
    }
    const events = yield* Effect.forEach(options.events, (e, i) => checkEvent(e, i))
    const executor = yield* openTransaction(options.adapters, options.tx)
    if (events.length === 0) return
    const mode = options.deferNotify?.(events) ? "none" : options.notify
    const { channels, payloads } = wakeUpsFor(options.schema, mode, events)
    yield* runQuery(executor, "append", options.sql, [
      JSON.stringify(events),
      notifyParam(channels, payloads),
    ])
    if (channels.length > 0) options.onNotified?.()
  })
