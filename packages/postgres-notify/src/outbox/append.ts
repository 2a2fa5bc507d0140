import { type BusError, InvalidEvent, NotInTransaction } from "@bus/core"
import { type Address, claimFreshId, decodeEnvelope, type Envelope, encodedEnvelope } from "@bus/core/adapter"
import { Effect } from "effect"
import { addressChannel, encodePayload, relayChannel, relayPayload } from "../names.js"
import type { TransactionAdapter } from "../sql/adapter.js"
import { runPrepared, runQuery, type SqlExecutor, type Statement } from "../sql/executor.js"
import type { AppendStatements } from "./queries.js"

/**
 * Transactional append: the insert and its wake-ups in one prepared statement inside the
 * caller's transaction.
 *
 * Everything that Postgres could refuse is checked here first, because a failed
 * statement inside the caller's transaction aborts the whole transaction, business
 * rows included (invariant 6: bad input changes nothing).
 *
 * Events built by `makeEnvelope` (every `publish`) were validated and encoded there; this
 * module reuses that encoding and adds only what Postgres alone refuses. Other envelopes
 * (a store used directly, events copied from elsewhere) are decoded and checked in full.
 *
 * @module
 */

/** Who gets woken when an append commits. */
export type NotifyMode = "addresses" | "relay" | "both" | "none"

// jsonb rejects \u0000 and unpaired surrogates, text rejects NUL bytes. JSON.stringify
// writes both as escapes (an unpaired surrogate as \udXXX; a valid pair stays raw), so
// the encoded event holds "\u0000" or "\ud" wherever it holds one. Two substring
// searches clear almost every event; only one that contains either text (possibly an
// escaped backslash followed by "u0000") gets the exact scan, whose look-behind skips
// escaped backslashes.
const unstorable = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i

const isStorable = (json: string): boolean =>
  (json.indexOf("\\u0000") === -1 && json.indexOf("\\ud") === -1) || !unstorable.test(json)

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const isoTime = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/

/** One event ready for the INSERT: its fields and its JSON, encoded once. */
interface Row {
  readonly id: string
  readonly tenant: string
  readonly channel: string
  readonly type: string
  readonly data: string
  readonly headers: string
  readonly time: string
  readonly json: string
}

const unstorableError = (index: number) =>
  new InvalidEvent({
    reason: "data",
    message: `event ${index} holds a NUL character or an unpaired UTF-16 surrogate, which Postgres cannot store`,
  })

/** The full check, for envelopes makeEnvelope did not build. */
const checkEvent = (raw: unknown, index: number): Effect.Effect<Row, BusError> =>
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
      const data = JSON.stringify(event.data)
      const headers = JSON.stringify(event.headers)
      const json = JSON.stringify({
        id: event.id,
        tenant: event.tenant,
        channel: event.channel,
        type: event.type,
        data: event.data,
        headers: event.headers,
        time: event.time,
      })
      if (!isStorable(json)) return Effect.fail(unstorableError(index))
      const { id, tenant, channel, type, time } = event
      return Effect.succeed({ id, tenant, channel, type, data, headers, time, json })
    }),
  )

/** A checked batch, and whether every id in it is fresh (see `claimFreshId`). */
interface Rows {
  readonly rows: ReadonlyArray<Row>
  readonly fresh: boolean
}

/**
 * Checks and encodes a batch: the stored encoding of makeEnvelope's envelopes, the full
 * check for anything else. Fails on the first bad event, before any statement. Only a batch
 * that passed claims its ids, and it claims every one of them: an envelope left unclaimed
 * while its batch was written would later be taken for one never written.
 */
const toRows = (events: ReadonlyArray<Envelope>): Effect.Effect<Rows, BusError> =>
  Effect.suspend(() => {
    const rows: Array<Row> = []
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!
      const encoded = typeof event === "object" && event !== null ? encodedEnvelope(event) : undefined
      if (encoded === undefined) {
        // Rare path (not from publish): finish the batch the slow way from here. Decoded or
        // copied events are never fresh, so the batch keeps the conflict guard.
        return Effect.map(
          Effect.forEach(events.slice(i), (e, k) => checkEvent(e, i + k)),
          (rest) => {
            for (const e of events) claimFreshId(e)
            return { rows: [...rows, ...rest], fresh: false }
          },
        )
      }
      if (!isStorable(encoded.json)) return Effect.fail(unstorableError(i))
      const { id, tenant, channel, type, time } = event
      rows.push({
        id,
        tenant,
        channel,
        type,
        data: encoded.data,
        headers: encoded.headers,
        time,
        json: encoded.json,
      })
    }
    let fresh = true
    // No short cut: every envelope of the batch must be claimed (see above).
    for (const event of events) fresh = claimFreshId(event) && fresh
    return Effect.succeed({ rows, fresh })
  })

const notInTransaction = (adapters: ReadonlyArray<TransactionAdapter>, tx: unknown) =>
  new NotInTransaction({
    message: `publish needs an open transaction of a supported driver (${adapters.map((a) => a.name).join(", ")}); got ${tx === null ? "null" : typeof tx}`,
  })

/** Resolves `tx` with the first adapter that recognises it. */
export const openTransaction = (
  adapters: ReadonlyArray<TransactionAdapter>,
  tx: unknown,
): Effect.Effect<SqlExecutor, BusError> => {
  for (const adapter of adapters) {
    const opened = adapter.open(tx)
    if (opened !== undefined) return opened
  }
  return Effect.fail(notInTransaction(adapters, tx))
}

/**
 * {@link openTransaction} that remembers, per class of transaction object, which adapter
 * took it: a `pg` client, a Kysely or Drizzle transaction is an instance of its driver's
 * class, so after the first publish its adapter is found with one lookup instead of asking
 * every adapter in turn. Objects without a class of their own (plain objects, functions
 * such as a postgres.js `tx`) are too alike to cache and are resolved as before. The
 * adapter still checks the object itself each time (shape and open transaction); one that
 * declines sends the object down the full list again.
 */
export const makeTransactionOpener = (
  adapters: ReadonlyArray<TransactionAdapter>,
): ((tx: unknown) => Effect.Effect<SqlExecutor, BusError>) => {
  const byClass = new WeakMap<object, TransactionAdapter>()
  const classOf = (tx: unknown): object | undefined => {
    if (typeof tx !== "object" || tx === null) return undefined
    const proto = Object.getPrototypeOf(tx) as object | null
    return proto === null || proto === Object.prototype ? undefined : proto
  }
  return (tx) => {
    const key = classOf(tx)
    if (key !== undefined) {
      const cached = byClass.get(key)
      const opened = cached?.open(tx)
      if (opened !== undefined) return opened
    }
    for (const adapter of adapters) {
      const opened = adapter.open(tx)
      if (opened === undefined) continue
      if (key !== undefined) byClass.set(key, adapter)
      return opened
    }
    return Effect.fail(notInTransaction(adapters, tx))
  }
}

/** Channels and payloads to NOTIFY for a batch: one per distinct address, and/or the relay channel. */
export const wakeUpsFor = (
  schema: string,
  mode: NotifyMode,
  addresses: Iterable<Address>,
  channelOf: (address: Address) => string = (a) => addressChannel(schema, a),
): { readonly channels: Array<string>; readonly payloads: Array<string> } => {
  const channels: Array<string> = []
  const payloads: Array<string> = []
  if (mode === "addresses" || mode === "both") {
    let last: Address | undefined
    let seen: Set<string> | undefined
    for (const a of addresses) {
      // A batch is nearly always of one address: compare with the previous one first.
      if (last !== undefined && a.tenant === last.tenant && a.channel === last.channel) continue
      last = a
      const payload = encodePayload(a)
      seen ??= new Set()
      if (seen.has(payload)) continue
      seen.add(payload)
      channels.push(channelOf(a))
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

// Channel names are a SHA-256 of the address: computed once per address per store. Bounded,
// and simply cleared when full (recomputing a name is cheap; growing for ever is not).
const maxCachedChannels = 10_000

const cachedChannels = (schema: string): ((address: Address) => string) => {
  const cache = new Map<string, string>()
  return (a) => {
    const key = `${a.tenant}\u0000${a.channel}`
    let channel = cache.get(key)
    if (channel === undefined) {
      if (cache.size >= maxCachedChannels) cache.clear()
      channel = addressChannel(schema, a)
      cache.set(key, channel)
    }
    return channel
  }
}

/** What {@link makeAppend} needs from its store. */
export interface AppendOptions {
  readonly adapters: ReadonlyArray<TransactionAdapter>
  readonly schema: string
  readonly statements: AppendStatements
  /** Run the statements prepared where the driver can (the store's `prepare` option). */
  readonly prepare: boolean
  readonly notify: NotifyMode
  /** Called after an append that sent wake-ups inside the caller's transaction (the pressure monitor counts them). */
  readonly onNotified?: (() => void) | undefined
  /**
   * Called with `tx` and the validated events once the transaction is open; true means the
   * SDK owns this transaction and sends its wake-ups after COMMIT, so the append sends none.
   */
  readonly deferNotify?: ((tx: unknown, events: ReadonlyArray<Address>) => boolean) | undefined
}

/**
 * The append of one store: check and encode every event, open the caller's transaction
 * (adapter cached per class), then one prepared statement: the INSERT (`ON CONFLICT (id)
 * DO NOTHING`: re-publishing an id is a no-op; left out when every id is fresh, which no
 * row can hold) with the batch's wake-ups.
 */
export const makeAppend = (
  options: AppendOptions,
): ((tx: unknown, events: ReadonlyArray<Envelope>) => Effect.Effect<void, BusError>) => {
  const open = makeTransactionOpener(options.adapters)
  const channelOf = cachedChannels(options.schema)
  const { statements } = options
  return (tx, events) =>
    Effect.gen(function* () {
      if (!Array.isArray(events)) {
        return yield* new InvalidEvent({ reason: "batch", message: "append needs an array of events" })
      }
      const { rows, fresh } = yield* toRows(events)
      const executor = yield* open(tx)
      if (rows.length === 0) return
      const mode = options.deferNotify?.(tx, rows) ? "none" : options.notify
      const { channels, payloads } = wakeUpsFor(options.schema, mode, rows, channelOf)
      const q = fresh ? statements.fresh : statements
      let statement: Statement
      let params: Array<unknown>
      if (rows.length === 1) {
        const r = rows[0]!
        params = [r.id, r.tenant, r.channel, r.type, r.data, r.headers, r.time]
        statement = channels.length === 0 ? q.one : channels.length === 1 ? q.oneNotifyOne : q.oneNotifyMany
      } else {
        let batch = "["
        for (let i = 0; i < rows.length; i++) batch += i === 0 ? rows[i]!.json : `,${rows[i]!.json}`
        params = [`${batch}]`]
        statement =
          channels.length === 0 ? q.many : channels.length === 1 ? q.manyNotifyOne : q.manyNotifyMany
      }
      if (channels.length === 1) params.push(channels[0], payloads[0])
      else if (channels.length > 1) params.push(notifyParam(channels, payloads))
      yield* options.prepare
        ? runPrepared(executor, "append", statement, params)
        : runQuery(executor, "append", statement.text, params)
      if (channels.length > 0) options.onNotified?.()
    })
}
