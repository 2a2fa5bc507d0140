import { Context, type Effect } from "effect"
import type { BusError } from "../model/errors.js"

/**
 * Retention: deleting old rows (and old inbox entries) from the outbox.
 *
 * @module
 */

/**
 * Prunes the outbox. The Postgres outbox runs it on a timer (its `retention` option); tests
 * and tools call it directly.
 *
 * @example
 * ```ts
 * import { OutboxRetention } from "@bus/core/adapter"
 *
 * // Drop what committed more than a week ago, but nothing a relay has yet to forward.
 * const pruned = OutboxRetention.use((r) => r.prune(7 * 24 * 3_600_000, { keepUnforwarded: true }))
 * ```
 */
export class OutboxRetention extends Context.Service<
  OutboxRetention,
  {
    /**
     * Deletes rows committed more than `olderThanMs` ago; with `keepUnforwarded` (a broker
     * transport is in use) rows the relay has not forwarded yet are kept. Cursors older
     * than the pruned rows then fail with `CursorInvalid` reason `expired`. Inbox entries of
     * events handled more than `olderThanMs` ago go with them. Returns how many outbox rows.
     * With `keepUnforwarded`, "forwarded" means covered by its partition's relay position.
     */
    readonly prune: (
      olderThanMs: number,
      options: { readonly keepUnforwarded: boolean },
    ) => Effect.Effect<number, BusError>
  }
>()("@bus/core/OutboxRetention") {}
