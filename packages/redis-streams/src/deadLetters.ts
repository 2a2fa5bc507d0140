import type { BusError } from "@bus/core"
import { type DeadLetter, decodeEnvelope } from "@bus/core/adapter"
import { Effect } from "effect"
import { type Client, command, fieldOf, parseEntries, type RawEntry } from "./connection.js"
import { deadLetterIndexKey } from "./names.js"

/**
 * Reading dead letters back: every dead-letter stream the consumer groups wrote to is
 * listed in `<prefix>:dlq-index`; the newest letters of each are merged, newest first.
 *
 * @module
 */

const toDeadLetter = (entry: RawEntry): Effect.Effect<DeadLetter | undefined> =>
  Effect.gen(function* () {
    const raw = fieldOf(entry, "envelope")
    if (raw === undefined) return undefined // a malformed entry: kept in the stream for operators only
    let json: unknown
    try {
      json = JSON.parse(raw)
    } catch {
      return undefined
    }
    const event = yield* decodeEnvelope(json).pipe(Effect.orElseSucceed(() => undefined))
    if (event === undefined) return undefined
    return {
      event,
      reason: fieldOf(entry, "reason") ?? "",
      source: fieldOf(entry, "group") ?? "",
      attempts: Number(fieldOf(entry, "attempts") ?? 0) || 0,
      at: fieldOf(entry, "at") ?? "",
    }
  })

/** The newest `limit` dead letters of every consumer group under `prefix`, newest first. */
export const listDeadLetters = (
  main: Client,
  prefix: string,
  limit: number,
): Effect.Effect<ReadonlyArray<DeadLetter>, BusError> =>
  Effect.gen(function* () {
    if (!(limit > 0)) return []
    const streams = yield* command("SMEMBERS", () => main.call("SMEMBERS", deadLetterIndexKey(prefix)))
    const keys = Array.isArray(streams) ? streams.map(String) : []
    const replies = yield* Effect.forEach(
      keys,
      (key) => command("XREVRANGE", () => main.call("XREVRANGE", key, "+", "-", "COUNT", limit)),
      { concurrency: 16 },
    )
    const letters: Array<DeadLetter> = []
    for (const reply of replies) {
      for (const entry of parseEntries(reply)) {
        const letter = yield* toDeadLetter(entry)
        if (letter !== undefined) letters.push(letter)
      }
    }
    return letters.sort((a, b) => b.at.localeCompare(a.at)).slice(0, limit)
  })
