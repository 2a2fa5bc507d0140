import { randomUUID } from "node:crypto"
import { Deferred, Effect, Exit, Fiber, Metric, Stream } from "effect"
import {
  type Address,
  DeadLetterStore,
  OutboxReader,
  OutboxRelay,
  type RelayClaim,
  type RelayedEvent,
  type RelayState,
} from "../contracts/outboxStore.js"
import { Transport } from "../contracts/transport.js"
import { type BusError, isBusError } from "../model/errors.js"
import { deadLettered, relayFailures, relayForwarded, relayLag } from "../observability/metrics.js"
import { ageOf, messageAttributes, messagingAttributes, producerLinks } from "../observability/telemetry.js"
import { markRepaired, type ResendSignal, repairedOnClaim, resendSignalOf } from "./resend.js"

/**
 * The relay: forwards committed outbox rows to a broker transport, written once for
 * every broker.
 *
 * It reads the outbox as a log, never as a queue of row states. Addresses are spread over
 * the store's partitions; each partition is held by one relay at a time (a lease it renews
 * with every batch), read by the same snapshot-safe position subscribers use, in large
 * pages, and its position is stored once per batch. No producer row is ever updated, so a
 * batch costs one read and one small write whatever its size.
 *
 * Fairness. A partition read in log order serves a quiet address only after every row
 * committed before its event, so one tenant's bulk import would hold back the rest. When a
 * page comes back full (the relay is behind), the relay also runs a fairness round: it asks
 * the store which addresses of the partition have rows past the position (an index walk,
 * not a read of the backlog) and forwards a few rows of each from that address's own
 * position, kept in `ahead` beside the partition's. A row covered by either position has
 * been forwarded; the log round skips what a fairness round already sent, and `ahead` is
 * dropped once a log round reaches the head.
 *
 * Failures. The broker dedupes by event id, so a relay that dies between sending and
 * storing its position costs repeated sends, never a repeated event; the next owner of the
 * partition resumes from the stored position. A row the broker refuses for good (or after
 * `maxAttempts` retryable refusals) is parked in the dead-letter place and the relay moves
 * on. A broker that is down stops the round without moving the position, and the relay
 * backs off with jitter.
 *
 * @module
 */

/**
 * What the relay needs of the outbox and the broker: the outbox's relay log, its reader
 * (whether a cursor covers a row) and its dead letters (a poison event), and the transport.
 */
export type RelayServices = OutboxRelay | OutboxReader | DeadLetterStore | Transport

/** Options of {@link runRelay} and {@link relayBatch}. */
export interface RelayOptions {
  /** This relay's name in partition leases (default: random per process). */
  readonly owner?: string
  /** Rows read per page of a partition (default 2,000). */
  readonly batchSize?: number
  /** How long a partition lease lives without renewal; a dead relay's partitions are taken over after it (default 5 s). */
  readonly leaseMs?: number
  /** Sends of one event refused with a retryable error before it is parked as a dead letter (default 10). */
  readonly maxAttempts?: number
  /** Longest wait between reads of an idle partition: the safety net behind wake-ups (default 1 s). */
  readonly maxIdleMs?: number
  /** Addresses sent to at once within a batch; events of one address are always sent in order (default 8). */
  readonly concurrency?: number
  /** Least time between two fairness rounds of a partition that is behind (default 100 ms). */
  readonly fairnessIntervalMs?: number
  /** Addresses a fairness round serves at most (default 256). */
  readonly fairnessAddresses?: number
  /** Most rows per address in a fairness round; a round sends about `batchSize` rows in all (default 200). */
  readonly fairnessRows?: number
  /** Relay only these partitions (default: a fair share of all, balanced with the other live relays). */
  readonly partitions?: ReadonlyArray<number>
}

/** What one {@link relayBatch} call did. */
export interface RelayBatchResult {
  /** Rows read from the outbox. */
  readonly read: number
  readonly forwarded: number
  /** Rows whose send failed and will be tried again. */
  readonly failed: number
  readonly parked: number
}

const resolve = (options: RelayOptions) => ({
  owner: options.owner ?? `relay-${randomUUID().slice(0, 8)}`,
  batchSize: Math.max(1, Math.floor(options.batchSize ?? 2_000)),
  leaseMs: Math.max(100, options.leaseMs ?? 5_000),
  maxAttempts: Math.max(1, options.maxAttempts ?? 10),
  maxIdleMs: Math.max(1, options.maxIdleMs ?? 1_000),
  concurrency: Math.max(1, options.concurrency ?? 8),
  fairnessIntervalMs: Math.max(0, options.fairnessIntervalMs ?? 100),
  fairnessAddresses: Math.max(1, options.fairnessAddresses ?? 256),
  fairnessRows: Math.max(1, options.fairnessRows ?? 200),
  partitions: options.partitions,
})

type Resolved = ReturnType<typeof resolve>

/** The most addresses a partition keeps positions of beside its own (bounds the stored state). */
const maxAhead = 1_000

const describe = (error: unknown): string =>
  isBusError(error) ? `${error._tag}: ${error.message}` : String(error)

const keyOf = (a: Address): string => `${a.tenant}/${a.channel}`

/** What sending some rows did. */
interface Forwarded {
  readonly forwarded: number
  readonly parked: number
  /** Rows not sent (an earlier row of their address failed, or the broker is down). */
  readonly failed: number
  readonly unavailable: boolean
  /** Addresses (`tenant/channel`) with rows that did not go through. */
  readonly leftBehind: ReadonlySet<string>
  /** Of those, each one's last row on the broker or parked, when it got that far. */
  readonly doneThrough: ReadonlyMap<string, RelayedEvent>
}

/** One partition as its relay holds it in memory. */
interface PartitionState {
  position: string
  ahead: Map<string, string>
  /** Retryable refusals per event id; cleared whenever the position passes them. */
  readonly attempts: Map<string, number>
  /** Where the last fairness round's address walk stopped. */
  resumeAt: Address | undefined
  lastFairness: number
}

const stateOf = (claim: RelayClaim): PartitionState => ({
  position: claim.state.position,
  ahead: new Map(Object.entries(claim.state.ahead)),
  attempts: new Map(),
  resumeAt: undefined,
  lastFairness: 0,
})

const toStored = (s: PartitionState): RelayState => ({
  position: s.position,
  ahead: Object.fromEntries(s.ahead),
})

/**
 * Broker data loss (resend.ts): when the transport's signal moved since this partition last
 * looked, the partition goes back to the beginning of the retained outbox and that is stored
 * at once, so whoever relays it next resends too. Returns the loss it acted on, if any.
 */
const rewindOnLoss = (
  resend: ResendSignal | undefined,
  seen: { generation: number },
  s: PartitionState,
  claim: RelayClaim,
) =>
  Effect.gen(function* () {
    if (resend === undefined) return undefined
    const loss = resend.current()
    if (loss.generation === seen.generation) return undefined
    seen.generation = loss.generation
    markRepaired(resend, claim.partition, loss.generation)
    // A partition no relay ever forwarded from, not yet moved by this one: the broker lost
    // nothing of it (a first start finds the stream missing for every partition), so there
    // is nothing to resend and nothing to warn about.
    if (claim.state.fresh === true && s.position === claim.state.position && s.ahead.size === 0) {
      yield* Effect.logDebug(`relay: partition ${claim.partition} has forwarded nothing yet: ${loss.reason}`)
      return undefined
    }
    s.position = "beginning"
    s.ahead.clear()
    s.attempts.clear()
    s.resumeAt = undefined
    yield* claim.commit(toStored(s))
    yield* Effect.logWarning(
      `relay: partition ${claim.partition} resends the retained outbox: ${loss.reason}`,
    )
    return loss
  })

/** Sends rows in order per address (addresses in parallel); parks what the broker refuses for good. */
const forward = (o: Resolved, s: PartitionState, rows: ReadonlyArray<RelayedEvent>) =>
  Effect.gen(function* () {
    const letters = yield* DeadLetterStore
    const transport = yield* Transport
    if (rows.length === 0)
      return {
        forwarded: 0,
        parked: 0,
        failed: 0,
        unavailable: false,
        leftBehind: new Set(),
        doneThrough: new Map(),
      } satisfies Forwarded
    const system = transport.capabilities.name
    const lag = Metric.withAttributes(relayLag, { transport: system })
    const byAddress = new Map<string, Array<RelayedEvent>>()
    for (const row of rows) {
      const key = keyOf(row.event)
      const list = byAddress.get(key)
      if (list === undefined) byAddress.set(key, [row])
      else list.push(row)
    }
    let forwarded = 0
    let parked = 0
    let failed = 0
    let unavailable = false
    const doneThrough = new Map<string, RelayedEvent>()
    const leftBehindKeys = new Set<string>()
    // One span per address run, linked to every producer's span (the events' traceparents).
    const sendRun = (run: ReadonlyArray<RelayedEvent>) =>
      transport
        .sendAll(
          run.map((row) => ({ event: row.event, meta: { position: row.position, frontier: row.frontier } })),
        )
        .pipe(
          Effect.withSpan(`send ${run[0]!.event.channel}`, {
            kind: "producer",
            links: producerLinks(run.map((row) => row.event)),
            attributes: messagingAttributes(
              system,
              run[0]!.event,
              { type: "send", name: "relay" },
              { ...messageAttributes(run[0]!.event), "messaging.batch.message_count": run.length },
            ),
          }),
        )
    yield* Effect.forEach(
      byAddress,
      ([key, list]) =>
        Effect.gen(function* () {
          let start = 0
          // Rows of an address that did not all go through: remember how far it got, so the
          // next round resends only the rest (the partition's position cannot move).
          const leftBehind = (unsent: number) => {
            failed += unsent
            leftBehindKeys.add(key)
            if (start > 0) doneThrough.set(key, list[start - 1]!)
          }
          while (start < list.length) {
            if (unavailable) return leftBehind(list.length - start)
            const run = list.slice(start)
            const outcome = yield* sendRun(run)
            const sent = Math.min(outcome.sent, run.length)
            forwarded += sent
            start += sent
            // Once per run, not per event: the oldest event's age is the run's lag.
            if (sent > 0) yield* Metric.update(lag, ageOf(run[0]!.event))
            if (outcome.error === undefined || sent >= run.length) {
              if (start < list.length) continue
              return
            }
            const row = run[sent]!
            const error = outcome.error
            if (error._tag === "TransportUnavailable") {
              // The broker is down, not this row: no attempt is counted, so an outage never
              // walks rows towards the dead-letter place.
              unavailable = true
              return leftBehind(list.length - start)
            }
            const attempts = (s.attempts.get(row.event.id) ?? 0) + 1
            if (error.retryable && attempts < o.maxAttempts) {
              s.attempts.set(row.event.id, attempts)
              leftBehind(list.length - start)
              yield* Effect.logWarning(
                `relay: send of ${row.event.id} failed (attempt ${attempts})`,
                describe(error),
              )
              return
            }
            // Refused for good: park it and go on with the rows behind it.
            yield* letters.deadLetter({
              event: row.event,
              reason: describe(error),
              source: "relay",
              attempts,
              at: new Date().toISOString(),
            })
            s.attempts.delete(row.event.id)
            parked++
            yield* Effect.logWarning(
              `relay: parked ${row.event.id} after ${attempts} attempt(s)`,
              describe(error),
            )
            start += 1
          }
        }),
      { concurrency: o.concurrency, discard: true },
    )
    const attrs = { transport: system }
    yield* Metric.update(Metric.withAttributes(relayForwarded, attrs), forwarded)
    if (failed > 0) yield* Metric.update(Metric.withAttributes(relayFailures, attrs), 1)
    if (parked > 0) yield* Metric.update(Metric.withAttributes(deadLettered, { source: "relay" }), parked)
    return {
      forwarded,
      parked,
      failed,
      unavailable,
      leftBehind: leftBehindKeys,
      doneThrough,
    } satisfies Forwarded
  })

/** What one round of a partition did. */
interface Round {
  readonly read: number
  readonly forwarded: number
  readonly parked: number
  readonly failed: number
  readonly unavailable: boolean
  /** The page was full: more rows wait right now. */
  readonly more: boolean
  readonly changed: boolean
}

/**
 * A log round: the next page of the partition after its position, minus what fairness
 * rounds already sent. The position moves only when every row of the page went through.
 */
const logRound = (o: Resolved, partition: number, s: PartitionState) =>
  Effect.gen(function* () {
    const relay = yield* OutboxRelay
    const reader = yield* OutboxReader
    const page = yield* relay.read(partition, s.position, o.batchSize)
    const todo =
      s.ahead.size === 0
        ? page.rows
        : page.rows.filter((row) => {
            const ahead = s.ahead.get(keyOf(row.event))
            return ahead === undefined || reader.covers(ahead, row.position) !== true
          })
    const outcome = yield* forward(o, s, todo)
    const ok = outcome.failed === 0
    let served = false
    if (ok) {
      s.position = page.next
      s.attempts.clear()
      // At the head every address is caught up to the same position.
      if (!page.more) s.ahead.clear()
    } else {
      // The position stays; the addresses that did go through (all or part of their rows)
      // are served ahead of it up to their last row on the broker, whose frontier covers of
      // that address exactly what was sent. Only the rest is sent again after the outage.
      const through = new Map<string, RelayedEvent>()
      for (const row of todo) {
        const key = keyOf(row.event)
        if (!outcome.leftBehind.has(key)) through.set(key, row)
      }
      for (const [key, row] of outcome.doneThrough) through.set(key, row)
      for (const [key, row] of through) {
        if (s.ahead.has(key) || s.ahead.size < maxAhead) {
          s.ahead.set(key, row.frontier)
          served = true
        }
      }
    }
    return {
      read: page.rows.length,
      ...outcome,
      more: page.more,
      changed: (ok && page.rows.length > 0) || served,
    } satisfies Round
  })

/**
 * A fairness round: a few rows of every address of the partition with rows past the
 * position, each from its own position, so a quiet address is never stuck behind a busy
 * one's backlog for more than a round.
 */
const fairnessRound = (o: Resolved, partition: number, s: PartitionState) =>
  Effect.gen(function* () {
    const relay = yield* OutboxRelay
    const reader = yield* OutboxReader
    const pending = yield* relay.pending(partition, s.position, s.resumeAt, o.fairnessAddresses)
    s.resumeAt = pending.complete ? undefined : pending.addresses[pending.addresses.length - 1]
    // A round stays about one batch in size, so it ends (and its position is stored) soon.
    const rowsEach = Math.max(
      1,
      Math.min(o.fairnessRows, Math.floor(o.batchSize / Math.max(1, pending.addresses.length))),
    )
    let read = 0
    let forwarded = 0
    let parked = 0
    let failed = 0
    let unavailable = false
    let changed = false
    yield* Effect.forEach(
      pending.addresses,
      (address) =>
        Effect.gen(function* () {
          if (unavailable) return
          const key = keyOf(address)
          const from = s.ahead.get(key)
          if (from === undefined && s.ahead.size >= maxAhead) return
          const page = yield* relay.read(partition, from ?? s.position, rowsEach, address)
          read += page.rows.length
          // Rows a log round sent since this address's own position was stored.
          const todo =
            from === undefined
              ? page.rows
              : page.rows.filter((r) => reader.covers(s.position, r.position) !== true)
          const outcome = yield* forward(o, s, todo)
          forwarded += outcome.forwarded
          parked += outcome.parked
          failed += outcome.failed
          if (outcome.unavailable) unavailable = true
          if (outcome.failed === 0 && page.rows.length > 0) {
            s.ahead.set(key, page.next)
            changed = true
          } else if (outcome.doneThrough.has(key)) {
            s.ahead.set(key, outcome.doneThrough.get(key)!.frontier)
            changed = true
          }
        }),
      { concurrency: o.concurrency, discard: true },
    )
    return { read, forwarded, parked, failed, unavailable, more: false, changed } satisfies Round
  })

/** Wake-ups of the partitions of one relay, fed by the store's `relay.wakeups`. */
interface Signal {
  /** Waits up to `ms` for a wake-up of `partition`; true when one ended the wait. */
  readonly wait: (partition: number, ms: number) => Effect.Effect<boolean>
}

const makeSignal = Effect.gen(function* () {
  const relay = yield* OutboxRelay
  const gates = new Map<number, Deferred.Deferred<void>>()
  // Every wake-up is kept until its partition's relay takes it, so one that comes in the
  // middle of a round (not waiting) makes the next wait return at once instead of sleeping
  // through a commit it was told about. `all` counts wake-ups of every partition; `seenAll`
  // is how many of those each partition has taken.
  const missed = new Set<number>()
  let all = 0
  const seenAll = new Map<number, number>()
  const gate = (partition: number) => {
    let g = gates.get(partition)
    if (g === undefined) {
      g = Deferred.makeUnsafe<void>()
      gates.set(partition, g)
    }
    return g
  }
  const fire = (partition: number) => {
    if (partition < 0) all++
    else missed.add(partition)
    const targets = partition < 0 ? [...gates.keys()] : [partition]
    for (const p of targets) {
      const g = gates.get(p)
      if (g === undefined) continue
      gates.delete(p)
      Deferred.doneUnsafe(g, Exit.void)
    }
  }
  /** Takes the wake-ups of `partition` not taken yet; true when there were any. */
  const take = (partition: number): boolean => {
    const any = (seenAll.get(partition) ?? 0) !== all
    seenAll.set(partition, all)
    return missed.delete(partition) || any
  }
  // A failing wake-up stream must not end the wake-ups: retry it after a pause.
  yield* relay.wakeups.pipe(
    Stream.runForEach((partition) => Effect.sync(() => fire(partition))),
    Effect.catch(() => Effect.sleep(1_000)),
    Effect.forever,
    Effect.forkScoped,
  )
  const signal: Signal = {
    wait: (partition, ms) =>
      Effect.suspend(() =>
        take(partition)
          ? Effect.succeed(true)
          : Effect.raceFirst(
              Effect.as(Effect.sleep(ms), false),
              Deferred.await(gate(partition)).pipe(Effect.map(() => take(partition) || true)),
            ),
      ),
  }
  return signal
})

/**
 * Relays one held partition until its lease is lost (or the fiber is interrupted).
 *
 * Wake-ups. Producers in broker mode send no NOTIFY inside their transaction; the store
 * signals the partitions of its own appends at once (`relay.wakeups`), and other processes'
 * through a NOTIFY outside any producer transaction where the store offers one. The append
 * is not committed yet when the signal arrives, so after a wake-up that finds nothing the
 * relay looks again 2, 4, 8 and 16 ms later before it falls back to waiting.
 */
const runPartition = (o: Resolved, claim: RelayClaim, signal: Signal, stopping: () => boolean) =>
  Effect.scoped(
    Effect.gen(function* () {
      const s = stateOf(claim)
      const partition = claim.partition
      const resend = resendSignalOf(yield* Transport)
      // A loss reported shortly before this relay took the partition (a stream the transport
      // had to create at start) is acted on too; an older one was its previous holder's.
      const seen = { generation: repairedOnClaim(resend, partition) }
      /** Events forwarded since the last rewind, until the partition is caught up again. */
      let resent: number | undefined
      let idleMs = 0
      let burst = 0
      let backoffMs = 0
      // The lease is renewed beside the rounds, so a long round (a slow broker) never lets
      // it run out under a relay that is still sending.
      let lost = false
      yield* claim.renew.pipe(
        Effect.catch(() => Effect.succeed(true)),
        Effect.tap((held) =>
          Effect.sync(() => {
            if (!held) lost = true
          }),
        ),
        Effect.delay(o.leaseMs / 3),
        Effect.forever,
        Effect.forkScoped,
      )
      // The position is stored beside the next round, not before it: a round's sends were
      // acked when its commit starts, and commits stay in order (one in flight; the next
      // waits for it), so only the latency of a statement leaves the relay's critical path.
      // A relay that dies with a commit in flight has its last batch re-sent by the next
      // owner, dropped by the broker as repeats.
      let committing: Fiber.Fiber<boolean, BusError> | undefined
      const settle = Effect.suspend(() => {
        const f = committing
        committing = undefined
        return f === undefined ? Effect.succeed(true) : Fiber.join(f)
      })
      // A partition handed to another relay stops between rounds, its position stored, so the
      // next owner resends nothing.
      while (!stopping()) {
        if (lost) {
          yield* Effect.logWarning(`relay: lost partition ${partition} to another relay`)
          return
        }
        const exit = yield* Effect.exit(
          Effect.gen(function* () {
            if ((yield* rewindOnLoss(resend, seen, s, claim)) !== undefined) resent = 0
            const log = yield* logRound(o, partition, s)
            let round: Round = log
            if (log.more && !log.unavailable && Date.now() - s.lastFairness >= o.fairnessIntervalMs) {
              s.lastFairness = Date.now()
              const fair = yield* fairnessRound(o, partition, s)
              round = {
                ...fair,
                read: log.read + fair.read,
                forwarded: log.forwarded + fair.forwarded,
                more: true,
                changed: log.changed || fair.changed,
              }
            }
            return round
          }),
        )
        if (Exit.isFailure(exit)) {
          backoffMs = Math.min(o.maxIdleMs * 5, Math.max(backoffMs * 2, 100))
          yield* Effect.logWarning(
            `relay: partition ${partition} failed; retrying in ${backoffMs} ms`,
            exit.cause,
          )
          yield* Effect.sleep(backoffMs * (0.5 + Math.random()))
          continue
        }
        const round = exit.value
        if (round.changed) {
          if (!(yield* settle)) {
            yield* Effect.logWarning(`relay: lost partition ${partition} to another relay`)
            return
          }
          committing = yield* Effect.forkScoped(claim.commit(toStored(s)))
        }
        if (round.unavailable || round.failed > 0) {
          // The position could not move (a broker outage, or a row refused with a retryable
          // error until it is parked): back off, growing, with jitter so a fleet does not
          // retry in step. Rows sent meanwhile are sent again and dropped by the broker.
          backoffMs = Math.min(o.maxIdleMs * 5, Math.max(backoffMs * 2, 100))
          if (round.unavailable)
            yield* Effect.logWarning(`relay: broker unavailable; retrying in ~${backoffMs} ms`)
          yield* Effect.sleep(backoffMs * (0.5 + Math.random()))
          continue
        }
        backoffMs = 0
        if (resent !== undefined) {
          resent += round.forwarded
          if (!round.more) {
            yield* Effect.logWarning(
              `relay: partition ${partition} resent the retained outbox after broker data loss: ${resent} event(s) forwarded again (the broker dropped those it still had)`,
            )
            resent = undefined
          }
        }
        if (round.more) continue
        if (round.read > 0) {
          idleMs = 0
          burst = 0
          continue
        }
        // Nothing to read. After a wake-up, look again soon: the append that signalled may
        // commit a moment later.
        if (burst > 0 && burst <= 16) {
          yield* Effect.sleep(burst)
          burst *= 2
          continue
        }
        idleMs = Math.min(o.maxIdleMs, Math.max(10, idleMs * 2))
        const woke = yield* signal.wait(partition, idleMs)
        // A commit usually follows its append within a millisecond or two.
        burst = woke ? 2 : 0
        if (woke) idleMs = 0
      }
      if (!(yield* settle)) yield* Effect.logWarning(`relay: lost partition ${partition} to another relay`)
    }),
  )

/**
 * Runs the relay until interrupted: keeps a fair share of the store's partitions (the
 * partitions divided by the live relays, rounded up), takes over partitions whose relay
 * stopped renewing its lease, gives extra ones back when relays join, and relays each
 * partition it holds in its own fiber.
 */
export const runRelay = (options: RelayOptions = {}): Effect.Effect<never, never, RelayServices> =>
  Effect.scoped(
    Effect.gen(function* () {
      const o = resolve(options)
      const relay = yield* OutboxRelay
      const signal = yield* makeSignal
      const held = new Map<number, { readonly fiber: Fiber.Fiber<void, never>; stop: boolean }>()
      const all = o.partitions ?? Array.from({ length: relay.partitions }, (_, i) => i)
      const context = yield* Effect.context<RelayServices>()
      // Gives a partition back: its relay finishes the round in progress and stores its
      // position (bounded by the lease), then the lease ends at once for the next owner.
      const release = (partition: number, graceMs: number) =>
        Effect.gen(function* () {
          const entry = held.get(partition)
          held.delete(partition)
          if (entry !== undefined) {
            entry.stop = true
            yield* Fiber.await(entry.fiber).pipe(
              Effect.timeout(graceMs),
              Effect.catch(() => Fiber.interrupt(entry.fiber)),
            )
          }
          yield* relay.release(partition, o.owner).pipe(Effect.ignore)
        })
      // Closing the bus does not wait for rounds: what was sent and not stored is sent again
      // by the next owner and dropped by the broker.
      // Leaving the live relays (a heartbeat of no time) lets the others take all at once.
      yield* Effect.addFinalizer(() =>
        Effect.forEach([...held.keys()], (p) => release(p, 0), {
          concurrency: "unbounded",
          discard: true,
        }).pipe(Effect.andThen(relay.heartbeat(o.owner, 0).pipe(Effect.ignore))),
      )
      let backoffMs = 0
      for (;;) {
        const exit = yield* Effect.exit(
          Effect.gen(function* () {
            for (const [partition, entry] of held) {
              if (entry.fiber.pollUnsafe() !== undefined) held.delete(partition)
            }
            const live = yield* relay.heartbeat(o.owner, o.leaseMs)
            const share = o.partitions !== undefined ? all.length : Math.ceil(all.length / Math.max(1, live))
            // Give back what is over the share, so a relay that joins gets partitions.
            for (const partition of [...held.keys()].slice(share)) yield* release(partition, o.leaseMs * 3)
            if (held.size >= share) return
            const taken = new Set(yield* relay.heldByOthers(o.owner))
            for (const partition of all) {
              if (held.size >= share) break
              if (held.has(partition) || taken.has(partition)) continue
              const claim = yield* relay.claim(partition, o.owner, o.leaseMs)
              if (claim === undefined) continue
              const entry = { stop: false } as { fiber: Fiber.Fiber<void, never>; stop: boolean }
              const fiber = yield* runPartition(o, claim, signal, () => entry.stop).pipe(
                Effect.catchCause((cause) =>
                  Effect.logWarning(`relay: partition ${partition} stopped`, cause),
                ),
                Effect.provideContext(context),
                Effect.forkScoped,
              )
              entry.fiber = fiber
              held.set(partition, entry)
            }
          }),
        )
        if (Exit.isFailure(exit)) {
          backoffMs = Math.min(o.leaseMs / 3, Math.max(backoffMs * 2, 100))
          yield* Effect.logWarning("relay: partition membership failed; retrying", exit.cause)
        } else backoffMs = 0
        // Renew membership well within the lease, so others never see this relay as gone.
        yield* Effect.sleep(backoffMs > 0 ? backoffMs * (0.5 + Math.random()) : o.leaseMs / 3)
      }
    }),
  ) as Effect.Effect<never, never, RelayServices>

/**
 * Relays every partition once, until each has nothing more to read or a send failed: for
 * tests and scripts that forward on demand instead of running {@link runRelay}. Takes and
 * releases each partition's lease.
 */
export const relayBatch = (
  options: RelayOptions = {},
): Effect.Effect<RelayBatchResult, BusError, RelayServices> =>
  Effect.gen(function* () {
    const o = resolve(options)
    const relay = yield* OutboxRelay
    let read = 0
    let forwarded = 0
    let failed = 0
    let parked = 0
    const all = o.partitions ?? Array.from({ length: relay.partitions }, (_, i) => i)
    for (const partition of all) {
      const claim = yield* relay.claim(partition, o.owner, o.leaseMs)
      if (claim === undefined) continue
      const s = stateOf(claim)
      const resend = resendSignalOf(yield* Transport)
      yield* rewindOnLoss(resend, { generation: repairedOnClaim(resend, partition) }, s, claim)
      for (;;) {
        const round = yield* logRound(o, partition, s)
        read += round.read
        forwarded += round.forwarded
        failed += round.failed
        parked += round.parked
        if (round.changed) yield* claim.commit(toStored(s))
        if (!round.more || round.failed > 0) break
      }
      yield* relay.release(partition, o.owner)
    }
    return { read, forwarded, failed, parked }
  }).pipe(Effect.withSpan("bus.relay.batch"))
