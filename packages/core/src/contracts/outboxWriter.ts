import { Context, type Effect } from "effect"
import type { Envelope } from "../model/envelope.js"
import type { BusError } from "../model/errors.js"

/**
 * Writing to the outbox: the first of the two services every outbox provides (with
 * {@link OutboxReader}). A new database starts here; see docs/new-transport.md.
 *
 * @module
 */

/**
 * Appends events inside the producer's own transaction. `Publisher` needs only this.
 *
 * @example
 * ```ts
 * import { OutboxWriter } from "@bus/core/adapter"
 * import { Effect, Layer } from "effect"
 *
 * const rows: Array<unknown> = []
 * const writer = Layer.succeed(OutboxWriter, {
 *   name: "rows",
 *   append: (_tx, events) => Effect.sync(() => void rows.push(...events)),
 * })
 * ```
 */
export class OutboxWriter extends Context.Service<
  OutboxWriter,
  {
    /** Store name, used as the cursor prefix and in logs (the same as its reader's). */
    readonly name: string
    /**
     * Appends events inside the caller's open transaction `tx` (a driver object the
     * store understands). Fails with `NotInTransaction` for anything else. The events
     * become visible exactly when, and only if, that transaction commits.
     */
    readonly append: (tx: unknown, events: ReadonlyArray<Envelope>) => Effect.Effect<void, BusError>
  }
>()("@bus/core/OutboxWriter") {}
