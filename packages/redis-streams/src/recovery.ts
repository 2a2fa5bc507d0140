import { type Address, type BusError, checkAddress, OutboxStore, Transport } from "@bus/core"
import { Effect } from "effect"

/**
 * Recovery after Redis lost data (a restart without persistence, a failover to a replica
 * that was behind, a flushed database). The outbox is the source of truth: everything
 * the relay forwarded is still there, so the lost stream entries can be sent again.
 *
 * @module
 */

/** Options of {@link resendFromOutbox}. */
export interface ResendOptions {
  /** Tenant channels to refill. */
  readonly addresses: ReadonlyArray<Address>
  /**
   * Outbox cursor to start after, per the outbox's own cursor format (`pg1:…`,
   * `mem1:…`), or `"beginning"` for every retained row (default). Start from a point
   * before the data loss: everything after it is sent again.
   */
  readonly from?: string
  /** Rows read per outbox page (default 500). */
  readonly pageSize?: number
}

/** What {@link resendFromOutbox} did, per address and in total. */
export interface ResendResult {
  readonly resent: number
  readonly byAddress: ReadonlyArray<{
    readonly tenant: string
    readonly channel: string
    readonly resent: number
  }>
}

/**
 * Sends every committed outbox event of `addresses` after `from` to the transport again,
 * in outbox order per address. `send` is idempotent while the dedupe markers live, so
 * events still in Redis are not appended twice; events whose entries (and markers) were
 * lost are appended again as new entries at the end of their stream. Subscribers and
 * consumer groups then receive them (again, if they had already seen them: handlers
 * are idempotent by event id, and each subscription drops ids it has seen).
 *
 * Runs alongside the live relay; events the relay has not forwarded yet may be sent by
 * both, which the dedupe absorbs.
 */
export const resendFromOutbox = (
  options: ResendOptions,
): Effect.Effect<ResendResult, BusError, OutboxStore | Transport> =>
  Effect.gen(function* () {
    const store = yield* OutboxStore
    const transport = yield* Transport
    const pageSize = options.pageSize ?? 500
    const byAddress: Array<{ tenant: string; channel: string; resent: number }> = []
    for (const raw of options.addresses) {
      const address = yield* checkAddress(raw)
      let cursor = options.from ?? "beginning"
      let resent = 0
      for (;;) {
        const page = yield* store.read(address, cursor, pageSize)
        for (const event of page.events) {
          const { cursor: _outboxCursor, ...envelope } = event
          yield* transport.send(envelope)
          resent++
        }
        cursor = page.next
        if (!page.more) break
      }
      byAddress.push({ ...address, resent })
    }
    return { resent: byAddress.reduce((n, a) => n + a.resent, 0), byAddress }
  })
