import type { BusError } from "@bus/core"
import { type DeadLetter, decodeEnvelope } from "@bus/core/adapter"
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream"
import { Effect } from "effect"
import { toBusError } from "./errors.js"
import type { ResolvedOptions } from "./options.js"

/**
 * Reading the dead-letter stream back: the newest `limit` records, newest first, in the
 * shape every transport reports (`bus.deadLetters()` merges them with the relay's dead
 * letters from the outbox).
 *
 * @module
 */

/** What a consumer group publishes to `<prefix>.dlq.<tenant>.<channel>`. */
export interface DeadLetterRecord {
  readonly event: unknown
  readonly reason: string
  readonly source: string
  readonly attempts: number
  readonly at: string
  /** Sequence of the event in the event stream. */
  readonly streamSeq: number
  /** True when `event.data` was left out to fit the record into `max_payload`. */
  readonly dataOmitted?: boolean
}

const decoder = new TextDecoder()

const toDeadLetter = (data: Uint8Array): Effect.Effect<DeadLetter | undefined> =>
  Effect.gen(function* () {
    let record: Partial<DeadLetterRecord>
    try {
      record = JSON.parse(decoder.decode(data)) as Partial<DeadLetterRecord>
    } catch {
      return undefined
    }
    if (typeof record !== "object" || record === null) return undefined
    const { cursor: _cursor, ...raw } = (record.event ?? {}) as { cursor?: unknown }
    const event = yield* decodeEnvelope(raw).pipe(Effect.option)
    if (event._tag === "None") return undefined
    return {
      event: event.value,
      reason: String(record.reason ?? ""),
      source: String(record.source ?? ""),
      attempts: Number(record.attempts ?? 0),
      at: String(record.at ?? ""),
    } satisfies DeadLetter
  })

/** The newest `limit` dead letters of the dead-letter stream, newest first. */
export const readDeadLetters = (
  jsm: JetStreamManager,
  js: JetStreamClient,
  o: ResolvedOptions,
  limit: number,
): Effect.Effect<ReadonlyArray<DeadLetter>, BusError> =>
  Effect.gen(function* () {
    const n = Math.max(0, Math.floor(limit))
    if (n === 0) return []
    const stream = o.deadLetterStreamName
    const info = yield* Effect.tryPromise({
      try: () => jsm.streams.info(stream),
      catch: (e) => toBusError(e, `stream info ${stream}`),
    })
    const { first_seq, last_seq, messages } = info.state
    if (messages === 0) return []
    const from = Math.max(first_seq, last_seq - n + 1)
    const data = yield* Effect.tryPromise({
      try: async () => {
        const consumer = await js.consumers.get(stream, { opt_start_seq: from })
        const out: Array<Uint8Array> = []
        try {
          const batch = await consumer.fetch({ max_messages: n, expires: 2_000 })
          for await (const m of batch) {
            out.push(m.data)
            if (m.seq >= last_seq || out.length >= n) break
          }
        } finally {
          await consumer.delete().catch(() => {})
        }
        return out
      },
      catch: (e) => toBusError(e, `read ${stream}`),
    })
    const letters = yield* Effect.forEach(data, toDeadLetter)
    return letters.filter((l): l is DeadLetter => l !== undefined).reverse()
  })
