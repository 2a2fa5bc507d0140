import type { BusError } from "@bus/core"
import {
  type Address,
  checkAddress,
  OutboxReader,
  type RelayLog,
  type SendItem,
  type SendOutcome,
  Transport,
} from "@bus/core/adapter"
import { Effect } from "effect"
import { type Client, runScript } from "./connection.js"
import { type ChannelKeys, newIdentity } from "./names.js"
import { identityScript } from "./scripts.js"

/**
 * Recovery after Redis lost data (a restart without persistence, a failover to a replica
 * that was behind, a flushed database). The outbox is the source of truth: everything
 * the relay forwarded is still there, so the lost stream entries can be sent again.
 *
 * The transport does this on its own (docs/redis.md, "Failure modes"): every stream has an
 * identity key that dies with its data; subscriptions and consumer-group members that see it
 * change (or their group vanish) recover from the outbox. {@link resendFromOutbox} stays for
 * operators who want to refill streams by hand, e.g. for a group that was offline.
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
): Effect.Effect<ResendResult, BusError, OutboxReader | Transport> =>
  Effect.gen(function* () {
    const store = yield* OutboxReader
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

/**
 * The identity of a stream (see `identityKey`): the current one, created when the key is
 * missing. With `rotate`, a `known` identity still in place is replaced (the stream itself
 * vanished: deleted by hand while its identity key stayed), once across all processes.
 * On a cluster the key is not waited on until a replica has it (a `WAIT` would hold the
 * shared connection): an identity lost in a failover right after it was created looks like a
 * lost stream, and readers re-read from the outbox once for nothing (ids drop the repeats).
 */
export const streamIdentity = (
  main: Client,
  keys: ChannelKeys,
  known?: string,
  rotate = false,
): Effect.Effect<string, BusError> =>
  runScript(main, identityScript, [keys.identity], [newIdentity(), known ?? "", rotate ? "1" : "0"]).pipe(
    Effect.map(String),
  )

/**
 * Sends every committed event of `address` after the outbox frontier `from` (or
 * `"beginning"`) to the broker again, as the relay sent it: read from the relay's log of
 * the address's partition, with each event's outbox position and frontier, through
 * `sendAll` (idempotent by event id while the dedupe markers live). Used after Redis lost
 * a stream; no saved cursor is needed, the frontier comes from the entries themselves.
 * Returns how many events were sent; a failed send fails the whole call, which can be run
 * again (repeats are dropped by their markers).
 */
export const resendAfter = (
  relay: RelayLog,
  sendAll: (items: ReadonlyArray<SendItem>) => Effect.Effect<SendOutcome>,
  address: Address,
  from: string,
  pageSize: number,
): Effect.Effect<number, BusError> =>
  Effect.gen(function* () {
    const partition = yield* relay.partitionOf(address)
    let after = from
    let resent = 0
    for (;;) {
      const page = yield* relay.read(partition, after, pageSize, address)
      if (page.rows.length > 0) {
        const outcome = yield* sendAll(
          page.rows.map((row) => ({
            event: row.event,
            meta: { position: row.position, frontier: row.frontier },
          })),
        )
        if (outcome.error !== undefined) return yield* Effect.fail(outcome.error)
        resent += page.rows.length
      }
      after = page.next
      if (!page.more) return resent
    }
  })
