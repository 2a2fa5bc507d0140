import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { Cause, Deferred, Effect, Fiber, Metric } from "effect"
import type { GroupMembership, MemberKey } from "../contracts/outboxStore.js"
import type { BusError } from "../model/errors.js"
import { assignedAddresses } from "../observability/metrics.js"

/**
 * A consumer group across tenants: `consume({ tenant: "*", channel, group })`. Written once
 * here, on top of each transport's group of one address, so every transport gets it.
 *
 * Each member registers in the outbox ({@link GroupMembership}) and, every tick, renews its
 * membership, learns the other live members, and runs the addresses of the channel that
 * rendezvous-hash to it among them: each address runs as an ordinary group of that address
 * (same name, so a wildcard group and a per-tenant group of that name share positions and
 * inbox). Work moves only through an address lease in the outbox: a member starts an address
 * after it took the lease, and gives the lease up only after it stopped the address (its
 * handler in flight finished or was interrupted, its unsettled deliveries handed back). So
 * two members never run one address at once, and per-address order holds through a
 * rebalance on every transport. On the outbox transports the address's own group claim
 * guards this too; on brokers the lease is what does.
 *
 * Bounds (with `tick` = `memberLeaseMs / 4`): a member that closes leaves at once and its
 * addresses run elsewhere within about two ticks plus `stopGraceMs`; a member that dies
 * holds its addresses until its lease ran out (`memberLeaseMs`) and one tick more. A member
 * that cannot renew its lease stops its addresses before the lease can run out (it fences
 * itself), so a stalled member never runs an address another member took over. New tenants
 * are found by reading the outbox's distinct tenants of the channel every
 * `discoverIntervalMs`.
 *
 * @module
 */

/** Settings of one member. */
export interface AllTenantsOptions {
  readonly members: GroupMembership
  readonly key: MemberKey
  readonly memberLeaseMs: number
  readonly discoverIntervalMs: number
  readonly transport: string
}

/** 32-bit FNV-1a with a murmur3 finaliser, so nearby member ids and tenants spread evenly. */
const score = (member: string, tenant: string): number => {
  let h = 0x811c9dc5
  const text = `${member}\u0000${tenant}`
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * The member an address belongs to among `members`: highest score, ties to the smaller id.
 * Rendezvous hashing: when a member comes or goes, only the addresses it gains or loses move.
 */
export const ownerOf = (tenant: string, members: ReadonlyArray<string>): string | undefined => {
  let best: string | undefined
  let bestScore = -1
  for (const m of members) {
    const s = score(m, tenant)
    if (s > bestScore || (s === bestScore && best !== undefined && m < best)) {
      best = m
      bestScore = s
    }
  }
  return best
}

/**
 * Runs the member until interrupted (or an address fails for good, or the membership store
 * fails with an error that retrying cannot fix). `runAddress(tenant)` runs the group of one
 * address until interrupted.
 */
export const consumeAllTenants = <R>(
  options: AllTenantsOptions,
  runAddress: (tenant: string) => Effect.Effect<void, BusError, R>,
): Effect.Effect<void, BusError, R> =>
  Effect.gen(function* () {
    const { members, key } = options
    const leaseMs = Math.max(200, options.memberLeaseMs)
    const tickMs = Math.max(50, Math.floor(leaseMs / 4))
    const discoverMs = Math.max(tickMs, options.discoverIntervalMs)
    const me = `${hostname()}:${process.pid}:${randomUUID()}`
    const gauge = Metric.withAttributes(assignedAddresses, {
      transport: options.transport,
      group: key.group,
      channel: key.channel,
    })

    /** Tenants of the channel seen so far (only grows: an address without events costs a claim, not a read). */
    const known = new Set<string>()
    /** Address leases this member holds. */
    const held = new Set<string>()
    /** Addresses running here, each a fiber running that address's group. */
    const running = new Map<string, Fiber.Fiber<void, never>>()
    const failed = yield* Deferred.make<never, BusError>()
    let nextDiscoverAt = 0
    /** When each held lease was confirmed taken (the lease statement had returned). */
    const takenAt = new Map<string, number>()
    /** The last heartbeat that succeeded: when it began, the other members, this member's leases. */
    let lastBeat:
      | { readonly at: number; readonly others: ReadonlyArray<string>; readonly held: ReadonlySet<string> }
      | undefined
    let fenced = false
    /** Addresses whose group ended without being stopped (to start again). */
    const ended = new Set<string>()
    /** Consecutive failures of each membership call, so an outage logs once, not every tick. */
    const failures = new Map<string, number>()

    const stop = (tenants: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        const fibers = tenants.flatMap((t) => {
          const f = running.get(t)
          running.delete(t)
          return f === undefined ? [] : [f]
        })
        // All at once: each lets its handler in flight finish for up to stopGraceMs.
        if (fibers.length > 0) yield* Fiber.interruptAll(fibers)
      })

    const start = (tenant: string) =>
      Effect.gen(function* () {
        const fiber = yield* runAddress(tenant).pipe(
          // An address whose group ended by itself is started again at the next tick.
          Effect.andThen(Effect.sync(() => ended.add(tenant))),
          Effect.catchCause((cause) =>
            Cause.hasInterruptsOnly(cause) ? Effect.void : Deferred.failCause(failed, cause),
          ),
          Effect.asVoid,
          // Detached: this member stops each address itself (on a rebalance, and in `leave`
          // when it stops), and must know it stopped before it gives the lease up.
          Effect.forkDetach,
        )
        running.set(tenant, fiber)
      })

    /** A membership call: a retryable failure waits for the next tick; any other ends the member. */
    const attempt = <A>(what: string, effect: Effect.Effect<A, BusError>) =>
      effect.pipe(
        Effect.map((a): A | undefined => {
          failures.delete(what)
          return a
        }),
        Effect.catch((e: BusError) => {
          if (!e.retryable) return Effect.fail(e)
          const n = (failures.get(what) ?? 0) + 1
          failures.set(what, n)
          return (
            n === 1 || n % 20 === 0
              ? Effect.logWarning(
                  `consumer group ${key.group} of */${key.channel}: ${what} failed ${n} time(s) in a row (${e.message}); trying again every ${tickMs} ms`,
                )
              : Effect.void
          ).pipe(Effect.as(undefined))
        }),
      )

    // The heartbeat runs on its own fiber, so a rebalance that waits for handlers to finish
    // never delays the renewal that keeps this member's leases.
    const beatOnce = Effect.gen(function* () {
      const at = Date.now()
      const beat = yield* attempt("the membership heartbeat", members.heartbeat(key, me, leaseMs))
      if (beat !== undefined) lastBeat = { at, others: beat.others, held: new Set(beat.held) }
    })
    const heartbeats = Effect.sleep(tickMs).pipe(Effect.andThen(beatOnce), Effect.forever)

    const tick = Effect.gen(function* () {
      if (Date.now() >= nextDiscoverAt) {
        const tenants = yield* attempt("listing the channel's tenants", members.tenants(key.channel))
        if (tenants !== undefined) {
          for (const t of tenants) known.add(t)
          nextDiscoverAt = Date.now() + discoverMs
        }
      }
      const beat = lastBeat
      if (beat === undefined) return
      if (Date.now() - beat.at >= leaseMs - tickMs) {
        // Fencing: this member's lease runs out before it can be renewed, after which another
        // member may take its addresses. Stop them all first; take nothing until renewed.
        if (!fenced)
          yield* Effect.logWarning(
            `consumer group ${key.group} of */${key.channel}: membership not renewed for ${Date.now() - beat.at} ms; stopping its ${running.size} addresses until it is`,
          )
        fenced = true
        yield* stop([...running.keys()])
        held.clear()
        takenAt.clear()
        return
      }
      fenced = false
      // A lease the heartbeat no longer lists although it was taken before the heartbeat
      // began went to another member (this one looked dead for a while): stop at once.
      const lost = [...held].filter((t) => !beat.held.has(t) && (takenAt.get(t) ?? 0) < beat.at)
      if (lost.length > 0) {
        for (const t of lost) {
          held.delete(t)
          takenAt.delete(t)
        }
        yield* stop(lost)
      }

      for (const t of ended) if (running.has(t)) running.delete(t)
      ended.clear()
      const everyone = [me, ...beat.others]
      const mine = new Set([...known].filter((t) => ownerOf(t, everyone) === me))
      // Addresses that moved to another member: stop them, then give their leases up.
      const moving = [...held].filter((t) => !mine.has(t))
      if (moving.length > 0) {
        yield* stop(moving)
        const released = yield* attempt("giving address leases up", members.release(key, me, moving))
        if (released !== undefined)
          for (const t of moving) {
            held.delete(t)
            takenAt.delete(t)
          }
      }
      const wanted = [...mine].filter((t) => !held.has(t)).sort()
      if (wanted.length > 0) {
        const taken = yield* attempt("taking address leases", members.lease(key, me, wanted))
        const now = Date.now()
        for (const t of taken ?? []) {
          held.add(t)
          takenAt.set(t, now)
        }
      }
      for (const t of held) if (mine.has(t) && !running.has(t)) yield* start(t)
      yield* Metric.update(gauge, running.size)
    })

    const loop = tick.pipe(Effect.andThen(Effect.sleep(tickMs)), Effect.forever)

    // Stopping: every address first (their handlers finish or are interrupted, their
    // deliveries go back), then the member leaves, so the others take over at their next tick.
    const leave = (beating: Fiber.Fiber<void, never>) =>
      Effect.gen(function* () {
        yield* stop([...running.keys()])
        yield* Metric.update(gauge, 0)
        // Only now: the heartbeat kept the leases while the addresses stopped.
        yield* Fiber.interrupt(beating)
        yield* members.leave(key, me).pipe(
          Effect.timeoutOption(5_000),
          Effect.flatMap((done) =>
            done._tag === "Some"
              ? Effect.void
              : Effect.logWarning(
                  `consumer group ${key.group} of */${key.channel}: leaving got no reply in 5 s; the others take over when its lease (${leaseMs} ms) runs out`,
                ),
          ),
          Effect.catch((e: BusError) =>
            Effect.logWarning(
              `consumer group ${key.group} of */${key.channel}: leaving failed (${e.message}); the others take over when its lease (${leaseMs} ms) runs out`,
            ),
          ),
        )
      })

    yield* beatOnce
    const beating = yield* heartbeats.pipe(
      Effect.catch((e: BusError) => Deferred.fail(failed, e)),
      Effect.asVoid,
      Effect.forkDetach,
    )
    yield* Effect.raceFirst(loop, Deferred.await(failed)).pipe(Effect.ensuring(leave(beating)))
  })
