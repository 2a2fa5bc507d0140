import { randomUUID } from "node:crypto"
import { Effect, Exit, Metric, Stream } from "effect"
import { type ForwardFailure, type LeasedEvent, OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import { type BusError, isBusError } from "../errors/BusError.js"
import { deadLettered, relayFailures, relayForwarded, relayLag } from "../metrics/metrics.js"
import { ageOf, messageAttributes, messagingAttributes, producerLinks } from "../observability/telemetry.js"

/**
 * The relay: forwards committed outbox rows to a broker transport, written once for
 * every broker. Rows are leased (so several relays share one outbox without sending a
 * row twice while its lease lives), sent with the event id as the broker's dedupe key,
 * then marked forwarded. A relay killed mid-batch leaves leases that expire; the next
 * relay re-sends those rows and the broker drops the duplicates by id.
 *
 * @module
 */

/** Options of {@link relayBatch} and {@link runRelay}. */
export interface RelayOptions {
  /** This relay's lease owner name (default: random per process). */
  readonly owner?: string
  /** Rows leased per batch (default 200). */
  readonly batchSize?: number
  /** How long a lease lives before another relay may take the row (default 30 s). */
  readonly leaseMs?: number
  /** Send attempts before a row is parked as a dead letter (default 10). */
  readonly maxAttempts?: number
  /** Longest idle wait between polls when the outbox is empty (default 200 ms: one cheap indexed query, 5/s, per idle relay). */
  readonly maxIdleMs?: number
  /** Channels sent to at once; events of one channel are always sent in order (default 8). */
  readonly concurrency?: number
}

/** What one batch did. */
export interface RelayBatchResult {
  readonly leased: number
  readonly forwarded: number
  readonly failed: number
  readonly parked: number
}

const resolve = (options: RelayOptions) => ({
  owner: options.owner ?? `relay-${randomUUID().slice(0, 8)}`,
  batchSize: options.batchSize ?? 200,
  leaseMs: options.leaseMs ?? 30_000,
  maxAttempts: options.maxAttempts ?? 10,
  // Short: with a broker, producers send no NOTIFY, so the relay's poll is its wake-up.
  maxIdleMs: options.maxIdleMs ?? 200,
  concurrency: options.concurrency ?? 8,
})

const describe = (error: unknown): string =>
  isBusError(error) ? `${error._tag}: ${error.message}` : String(error)

/** Leases one batch, forwards it and settles every row. */
export const relayBatch = (
  options: RelayOptions = {},
): Effect.Effect<RelayBatchResult, BusError, OutboxStore | Transport> =>
  Effect.gen(function* () {
    const o = resolve(options)
    return yield* relayBatchWith(o)
  })

const relayBatchWith = (o: ReturnType<typeof resolve>) =>
  Effect.gen(function* () {
    const store = yield* OutboxStore
    const transport = yield* Transport
    const leased = yield* store.lease(o.owner, o.batchSize, o.leaseMs)
    if (leased.length === 0) return { leased: 0, forwarded: 0, failed: 0, parked: 0 }

    // Per channel, in outbox order: a failure stops that channel's remaining rows for
    // this batch, so a later event never overtakes an earlier one on the broker.
    const system = transport.capabilities.name
    const lag = Metric.withAttributes(relayLag, { transport: system })
    // One span per address run, linked to every producer's span (the events' traceparents).
    const sendRun = (rows: ReadonlyArray<LeasedEvent>, onSent: (sent: number) => void) =>
      transport
        .sendAll(
          rows.map((row) => ({ event: row.event, meta: { position: row.position, frontier: row.frontier } })),
          onSent,
        )
        .pipe(
          Effect.tap((outcome) =>
            Effect.forEach(rows.slice(0, outcome.sent), (row) => Metric.update(lag, ageOf(row.event)), {
              discard: true,
            }),
          ),
          Effect.withSpan(`send ${rows[0]!.event.channel}`, {
            kind: "producer",
            links: producerLinks(rows.map((row) => row.event)),
            attributes: messagingAttributes(
              system,
              rows[0]!.event,
              { type: "send", name: "relay" },
              {
                ...messageAttributes(rows[0]!.event),
                "messaging.batch.message_count": rows.length,
                "bus.relay.attempt": rows[0]!.attempts,
              },
            ),
          }),
        )
    const byAddress = new Map<string, Array<LeasedEvent>>()
    for (const row of leased) {
      const key = `${row.event.tenant}\u0000${row.event.channel}`
      const list = byAddress.get(key) ?? []
      list.push(row)
      byAddress.set(key, list)
    }
    const forwarded: Array<string> = []
    const failures: Array<ForwardFailure> = []
    const untried: Array<string> = []
    let unavailable = 0
    yield* Effect.forEach(
      [...byAddress.values()],
      (rows) =>
        Effect.gen(function* () {
          // The whole run in one pipelined send; the rows before the first failure went
          // through, in order. After a parked row the next ones go in a new run.
          let start = 0
          while (start < rows.length) {
            const run = rows.slice(start)
            // Rows join `forwarded` as the broker confirms them, so an interrupted relay
            // completes what it knows went through.
            let confirmed = 0
            const confirm = (sent: number) => {
              for (; confirmed < Math.min(sent, run.length); confirmed++)
                forwarded.push(run[confirmed]!.event.id)
            }
            const outcome = yield* sendRun(run, confirm)
            confirm(outcome.sent)
            if (outcome.error === undefined || outcome.sent >= run.length) return
            const i = start + outcome.sent
            const row = rows[i]!
            const failure = outcome.error
            if (failure._tag === "TransportUnavailable") {
              // The broker is down, not this row: hand the channel back without counting an
              // attempt, so an outage never walks rows towards the dead-letter place.
              for (const rest of rows.slice(i)) untried.push(rest.event.id)
              unavailable++
              return
            }
            const park = !failure.retryable
            failures.push({ id: row.event.id, error: describe(failure), park })
            if (!park) {
              for (const rest of rows.slice(i + 1)) untried.push(rest.event.id)
              return
            }
            start = i + 1
          }
        }),
      { concurrency: o.concurrency, discard: true },
    ).pipe(
      // A relay stopped mid-batch (its bus closing) settles what it can at once, so other
      // relays need not wait out the lease. A killed process runs no finalizer: then the
      // lease expires and another relay re-sends, and the broker drops the repeats by id.
      Effect.onInterrupt(() => {
        const sent = new Set(forwarded)
        const unsent = leased.map((r) => r.event.id).filter((id) => !sent.has(id))
        return Effect.all([
          forwarded.length > 0 ? store.complete(o.owner, forwarded) : Effect.void,
          unsent.length > 0 ? store.release(o.owner, unsent) : Effect.void,
        ]).pipe(Effect.ignore)
      }),
    )
    if (forwarded.length > 0) yield* store.complete(o.owner, forwarded)
    if (untried.length > 0) yield* store.release(o.owner, untried)
    const { parked } =
      failures.length > 0 ? yield* store.fail(o.owner, failures, o.maxAttempts) : { parked: 0 }
    const attrs = { transport: transport.capabilities.name }
    yield* Metric.update(Metric.withAttributes(relayForwarded, attrs), forwarded.length)
    yield* Metric.update(Metric.withAttributes(relayFailures, attrs), failures.length)
    yield* Metric.update(Metric.withAttributes(deadLettered, { source: "relay" }), parked)
    if (failures.length > 0) {
      yield* Effect.logWarning(
        `relay: ${failures.length} send(s) failed, ${parked} parked`,
        failures[0]?.error,
      )
    }
    if (unavailable > 0)
      yield* Effect.logWarning(`relay: broker unavailable; ${untried.length} row(s) handed back`)
    return {
      leased: leased.length,
      forwarded: forwarded.length,
      failed: failures.length + unavailable,
      parked,
    }
  }).pipe(Effect.withSpan("bus.relay.batch"))

/**
 * Runs the relay until interrupted. A full batch is followed at once by the next; an
 * empty outbox is polled with a growing pause (up to `maxIdleMs`) that a change signal
 * from the store cuts short, so an idle relay neither spins nor lags.
 */
export const runRelay = (options: RelayOptions = {}): Effect.Effect<never, never, OutboxStore | Transport> =>
  Effect.gen(function* () {
    const o = resolve(options)
    const store = yield* OutboxStore
    let idleMs = 10
    for (;;) {
      const exit = yield* Effect.exit(relayBatchWith(o))
      if (Exit.isFailure(exit)) {
        yield* Effect.logWarning("relay: batch failed; backing off", exit.cause)
        idleMs = Math.min(o.maxIdleMs * 5, Math.max(idleMs * 2, 100))
        yield* Effect.sleep(idleMs)
        continue
      }
      if (exit.value.failed > 0 && exit.value.forwarded === 0) {
        // Nothing went through (broker down, or only failing rows): back off, growing.
        idleMs = Math.min(o.maxIdleMs * 5, Math.max(idleMs * 2, 100))
        yield* Effect.sleep(idleMs)
        continue
      }
      if (exit.value.leased >= o.batchSize) {
        idleMs = 10
        continue
      }
      if (exit.value.leased > 0) idleMs = 10
      else idleMs = Math.min(o.maxIdleMs, idleMs * 2)
      yield* Effect.raceFirst(
        Effect.sleep(idleMs),
        // A failing change stream must not cut the pause short, or the loop would spin.
        store.changes.pipe(
          Stream.take(1),
          Stream.runDrain,
          Effect.catch(() => Effect.never),
        ),
      )
    }
  })
