import type { DeliveredEvent } from "@bus/core"
import { type Address, decodeEnvelope, type Envelope, envelopeToJson, withFrontier } from "@bus/core/adapter"
import { Effect } from "effect"
import { fieldOf, type RawEntry } from "./connection.js"
import { type CursorBinding, toCursor } from "./names.js"

/**
 * How an event is stored in a stream entry, and read back.
 *
 * An entry has two fields: `id` (the event id, for operators reading the stream) and
 * `envelope` (the envelope as compact JSON, exactly what the outbox stored), and, when the
 * relay passed them, `pos` (the event's outbox position) and `front` (an outbox frontier
 * that the event's cursor carries after `~`; see docs/flip.md). Entries are
 * untrusted on the way back: anything else another writer put into the stream is
 * skipped with a warning, never delivered.
 *
 * @module
 */

/** The entry fields of an event: `[name, value, …]` for XADD. */
export const encodeEntry = (event: Envelope): { readonly id: string; readonly envelope: string } => ({
  id: event.id,
  envelope: envelopeToJson(event),
})

/**
 * Why an entry is not a deliverable event of `address`, or the event, with its cursor bound
 * to the address and the stream's identity (`binding`).
 */
export const decodeEntry = (
  address: Address,
  entry: RawEntry,
  binding: CursorBinding,
): Effect.Effect<DeliveredEvent, string> =>
  Effect.gen(function* () {
    const raw = fieldOf(entry, "envelope")
    if (raw === undefined) return yield* Effect.fail("no envelope field")
    let json: unknown
    try {
      json = JSON.parse(raw)
    } catch {
      return yield* Effect.fail("the envelope field is not JSON")
    }
    const envelope = yield* decodeEnvelope(json).pipe(Effect.mapError((e) => e.message))
    if (envelope.tenant !== address.tenant || envelope.channel !== address.channel) {
      return yield* Effect.fail(
        `the envelope belongs to ${envelope.tenant}/${envelope.channel}, not to this stream's ${address.tenant}/${address.channel}`,
      )
    }
    const idField = fieldOf(entry, "id")
    if (idField !== undefined && idField !== envelope.id) {
      return yield* Effect.fail("the id field does not match the envelope's id")
    }
    return {
      ...envelope,
      cursor: withFrontier(toCursor(entry.id, binding), fieldOf(entry, "front"), envelope),
    }
  })

/** The outbox position the relay stored with an entry, if any. */
export const positionOf = (entry: RawEntry): string | undefined => fieldOf(entry, "pos")

/** The outbox frontier the relay stored with an entry, if any (an outbox cursor covering the event). */
export const frontierOf = (entry: RawEntry): string | undefined => fieldOf(entry, "front")

/** Decodes an entry for delivery; a malformed one is logged and yields `undefined`. */
export const decodeOrSkip = (
  address: Address,
  stream: string,
  entry: RawEntry,
  binding: CursorBinding,
): Effect.Effect<DeliveredEvent | undefined> =>
  decodeEntry(address, entry, binding).pipe(
    Effect.catch((reason) =>
      Effect.logWarning(`redis-streams: skipping malformed entry ${entry.id} of ${stream}: ${reason}`).pipe(
        Effect.as(undefined),
      ),
    ),
  )
