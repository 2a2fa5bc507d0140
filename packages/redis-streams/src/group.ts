import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import type { BusError } from "@bus/core"
import {
  addressTag,
  checkAddress,
  type Delivery,
  type GroupRequest,
  type OutboxReader,
  type RelayLog,
  type SendItem,
  type SendOutcome,
  validateName,
} from "@bus/core/adapter"
import { type Cause, Effect, Option, Queue, Semaphore, Stream } from "effect"
import {
  type Client,
  command,
  connectionLosses,
  ownedConnection,
  parseReadReply,
  type RawEntry,
  readWithIdentity,
  replyMarginMs,
  retryTransient,
  runScript,
} from "./connection.js"
import { isNoGroup } from "./errors.js"
import { type ChannelKeys, channelKeys, compareStreamIds, type StreamId } from "./names.js"
import type { ResolvedOptions } from "./options.js"
import { resendAfter, streamIdentity } from "./recovery.js"
import {
  autoclaimScript,
  cleanupScript,
  deadLetterScript,
  groupFloorScript,
  reclaimScript,
  retireScript,
  touchScript,
} from "./scripts.js"
import { streamPosition } from "./subscribe.js"
import { decodeEntry, positionOf } from "./wire.js"

/**
 * Consumer groups on Redis Streams.
 *
 * Each member is one Redis consumer with a unique name. It reads with `XREADGROUP …
 * BLOCK` on a connection of its own, never holding more than `maxInFlight` unsettled
 * entries. While it holds an entry (handed to the handler, queued, or waiting for a
 * retry) it renews the entry's idle time every third of `claimIdleMs` (XCLAIM to itself
 * with JUSTID, which counts no delivery), so another member never claims an entry that
 * is still being handled. Entries of a member that died stop being renewed; after
 * `claimIdleMs` the next member to run XAUTOCLAIM takes them over, and the delivery count
 * Redis keeps becomes `attempt`. A member that stops cleanly hands its unsettled entries
 * back at once (idle time set far in the past), so the others claim them without
 * waiting.
 *
 * `retry(delay)`: Redis has no delayed redelivery. The entry stays pending for this
 * member (renewed, so nobody else takes it) and, after the delay, the member claims it
 * to itself again (XCLAIM, one more delivery) and hands it to the handler. The entry
 * keeps its in-flight slot meanwhile, so with `maxInFlight` 1 later events wait behind a
 * retrying one, as on the in-memory transport. If the member dies while waiting, the
 * entry is claimed by another member like any other.
 *
 * `deadLetter(reason)`: one script adds the entry (with reason, group, attempts) to the
 * channel's dead-letter stream and acknowledges it; the stream is listed in the
 * dead-letter index that the transport's `deadLetters` reads.
 *
 * Data loss. Every read also reads the stream's identity key (same round trip). When it is
 * gone or changed, or the group vanished with its stream, Redis lost the group's pending
 * and unread entries. The member re-creates the group, lets the handlers it still runs
 * finish (up to `claimIdleMs`), and re-sends from the outbox every event after the group's
 * *floor*: the outbox frontier of the entry just before its oldest pending entry (or of its
 * last delivered entry), sampled every `claimIdleMs / 2` (at most 5 s) while the stream was
 * intact: an older sample only means more events re-sent. Re-sent events the group already
 * handled are skipped by its inbox: the member reports every delivery the outbox had
 * before the recovery as a redelivery (`attempt` ≥ 2), so the consumer loop looks each one
 * up instead of trusting that it is new.
 *
 * @module
 */

/** A member's own state for one entry it holds. */
interface Held {
  /** Set once ack / retry / deadLetter ran for the current delivery. */
  settled: boolean
}

/** Idle time that hands an entry back: far over any `claimIdleMs`. */
const handBackIdleMs = 1_000_000_000_000

interface Claimed {
  readonly entry: RawEntry
  readonly deliveries: number
}

const parseClaimed = (reply: unknown): Array<Claimed> => {
  if (!Array.isArray(reply)) return []
  const out: Array<Claimed> = []
  for (const row of reply) {
    if (!Array.isArray(row) || typeof row[0] !== "string") continue
    const fields = Array.isArray(row[1]) ? row[1].map((f: unknown) => String(f)) : []
    out.push({ entry: { id: row[0], fields }, deliveries: Number(row[2] ?? 1) || 1 })
  }
  return out
}

/** A connection of one node: its socket's local end, and how to reach that node's commands. */
interface NodeConnection {
  readonly status: string
  readonly stream?: { readonly localPort?: number; readonly localAddress?: string } | undefined
  readonly options: { readonly host?: string | undefined; readonly port?: number | undefined }
  readonly call: (...args: Array<string | number>) => Promise<unknown>
}

/** The node connections of a cluster client; undefined for a single-node client. */
const nodesOf = (client: Client): ReadonlyArray<NodeConnection> | undefined => {
  const nodes = (client as unknown as { nodes?: (role: "all") => ReadonlyArray<NodeConnection> }).nodes
  return typeof nodes === "function" ? nodes.call(client, "all") : undefined
}

/**
 * Closes `conn` on the server and returns once the server has: found by its address in
 * CLIENT LIST (the port of our end of the socket) and killed by id. A command the server
 * had read from it before is done by then; one it had not is dropped. Best effort: when
 * the connection is not found (not connected, a proxy in between), nothing is killed.
 * On a cluster, `conn` holds one connection per node it talked to (its blocking read went
 * to the stream's master): each is killed through `main`'s connection to the same node.
 */
const killOnServer = (main: Client, conn: Client): Effect.Effect<void> => {
  const connNodes = nodesOf(conn)
  const mainNodes = nodesOf(main)
  if (connNodes === undefined || mainNodes === undefined)
    return killOnNode(main as unknown as NodeConnection, conn as unknown as NodeConnection)
  return Effect.forEach(
    connNodes,
    (node) => {
      const via = mainNodes.find(
        (m) => m.options.host === node.options.host && m.options.port === node.options.port,
      )
      return via === undefined ? Effect.void : killOnNode(via, node)
    },
    { discard: true },
  )
}

const killOnNode = (main: NodeConnection, conn: NodeConnection): Effect.Effect<void> =>
  Effect.gen(function* () {
    const socket = conn.stream
    const port = socket?.localPort
    if (conn.status !== "ready" || port === undefined) return
    const list = yield* command("CLIENT LIST", () => main.call("CLIENT", "LIST", "TYPE", "normal"))
    const line = String(list)
      .split("\n")
      .find((l) => {
        const addr = / addr=(\S+)/.exec(l)?.[1]
        return (
          addr?.endsWith(`:${port}`) === true &&
          addr.includes(socket?.localAddress?.replace(/^::ffff:/, "") ?? "")
        )
      })
    const id = line === undefined ? undefined : /^id=(\d+)/.exec(line)?.[1]
    if (id !== undefined) yield* command("CLIENT KILL", () => main.call("CLIENT", "KILL", "ID", id))
  }).pipe(Effect.ignore)

/** Creates the group (at the start of the stream, creating the stream) unless it exists. */
export const ensureGroup = (main: Client, stream: string, group: string): Effect.Effect<void, BusError> =>
  command("XGROUP CREATE", () => main.call("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")).pipe(
    Effect.asVoid,
    Effect.catch((error: BusError) =>
      error.message.includes("BUSYGROUP") ? Effect.void : Effect.fail(error),
    ),
  )

/** Everything a group member needs from the transport. */
export interface GroupContext {
  readonly main: Client
  readonly config: ResolvedOptions
  /** How often the shared connection was lost (one listener for the whole transport). */
  readonly mainLosses: { readonly count: number }
  /** The outbox, when one is at hand: what is re-sent after Redis lost a stream. */
  readonly store: Option.Option<OutboxReader["Service"]>
  /** The outbox's relay log, read by those re-sends. */
  readonly relay: Option.Option<RelayLog>
  /** The transport's `sendAll`, for those re-sends. */
  readonly sendAll: (items: ReadonlyArray<SendItem>) => Effect.Effect<SendOutcome>
}

/** What a member noticed was lost: the group alone, or the stream (with its new identity). */
type Loss = { readonly kind: "group" } | { readonly kind: "stream"; readonly to: string }

/** One member of a consumer group: a stream of deliveries that ends when it is no longer consumed. */
export const groupMember = (ctx: GroupContext, request: GroupRequest): Stream.Stream<Delivery, BusError> =>
  Stream.unwrap(
    Effect.gen(function* () {
      const { main, config } = ctx
      const address = yield* checkAddress(request)
      const group = validateName("group", request.group)
      if (typeof group !== "string") return yield* group
      const keys: ChannelKeys = channelKeys(config.keyPrefix, address)
      const stream = keys.stream
      const maxInFlight = Math.max(1, Math.floor(request.maxInFlight) || 1)
      const consumer = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`
      const heartbeatMs = Math.max(50, Math.floor(config.claimIdleMs / 3))
      const claimEveryMs = Math.max(50, Math.min(5_000, Math.floor(config.claimIdleMs / 2)))

      yield* retryTransient(ensureGroup(main, stream, group), `creating group ${group} on ${stream}`)
      const tag = addressTag(address)
      /** The identity of the stream this member reads (see `identityKey`). */
      let identity = yield* retryTransient(streamIdentity(main, keys), "reading the stream identity")
      /** The group's floor while the stream had `identity` (see the module doc), or undefined. */
      let floor: string | undefined
      /** The newest entry a read of this member was assigned, in the stream with `identity`. */
      let highestRead: StreamId = "0-0"
      /** A loss noticed and not yet recovered from. */
      let pendingLoss: Loss | undefined
      /** The outbox head when the member last recovered: deliveries it covers may have been handled. */
      let recoveredThrough: string | undefined
      let recoveredAt = 0
      const sampleFloor = runScript(main, groupFloorScript, [stream, keys.identity], [group]).pipe(
        Effect.flatMap((reply) =>
          Effect.sync(() => {
            const [seen, kind, frontier] = Array.isArray(reply) ? reply.map(String) : []
            // A sample of another stream (lost a moment ago) says nothing about this one.
            if (seen !== identity || pendingLoss !== undefined) return
            if (kind === "front" && frontier !== undefined) floor = frontier
            else if (kind === "start" || kind === "unknown") floor = "beginning"
          }),
        ),
        Effect.catch((error: BusError) =>
          Effect.logDebug("redis-streams: sampling the group's floor failed", error.message),
        ),
      )
      yield* sampleFloor
      const conn = yield* ownedConnection(main, `${config.connectionName}-group`)
      // A reply lost with a dropped connection (entries XREADGROUP or a claim assigned to
      // this member) is recovered by reading the member's own pending entries again.
      const losses = [yield* connectionLosses(conn), ctx.mainLosses]
      const lossCount = () => losses.reduce((n, l) => n + l.count, 0)
      const scope = yield* Effect.scope
      const deliveries = yield* Queue.unbounded<Delivery, BusError | Cause.Done>()
      const permits = yield* Semaphore.make(maxInFlight)
      /** Entries this member holds and has not settled for good: in the queue, at the handler, or waiting for a retry. */
      const held = new Map<StreamId, Held>()

      const script = (s: Parameters<typeof runScript>[1], args: ReadonlyArray<string | number>) =>
        runScript(main, s, [stream], [group, consumer, ...args])

      /** Drops an entry from the member's hands and frees its in-flight slot. */
      const finish = (id: StreamId) =>
        Effect.suspend(() => (held.delete(id) ? Semaphore.release(permits, 1) : Effect.void))

      /**
       * The group is gone. If its stream vanished too (or its identity changed), the stream
       * lost its data: the identity moves on (once, whoever notices first) and the read loop
       * recovers. Checked before the group is re-created, which creates the stream.
       */
      const groupGone = Effect.gen(function* () {
        const exists = yield* command("EXISTS", () => main.exists(stream))
        const current = yield* streamIdentity(main, keys, identity, exists === 0)
        if (current !== identity) pendingLoss = { kind: "stream", to: current }
        else pendingLoss ??= { kind: "group" }
        yield* ensureGroup(main, stream, group)
      })

      const recreateGroupOn = <A>(effect: Effect.Effect<A, BusError>, fallback: A) =>
        effect.pipe(
          Effect.catch((error: BusError) =>
            isNoGroup(error)
              ? retryTransient(groupGone, "re-creating the group").pipe(Effect.as(fallback))
              : Effect.fail(error),
          ),
        )

      /**
       * Recovers from a loss: re-creates the group and, when the stream lost its data,
       * re-sends from the outbox every event after the group's floor. Logs what was lost
       * and what was re-sent.
       */
      const recoverLoss = (loss: Loss) =>
        Effect.gen(function* () {
          const startedAt = Date.now()
          yield* retryTransient(ensureGroup(main, stream, group), "re-creating the group")
          if (Option.isNone(ctx.store) || Option.isNone(ctx.relay)) {
            if (loss.kind === "stream") {
              identity = loss.to
              highestRead = "0-0"
            }
            return yield* Effect.logError(
              `redis-streams: ${loss.kind === "stream" ? `stream ${stream} lost its data` : `group ${group} of ${stream} was deleted`}; group ${group} was re-created at the start of the stream, and without an outbox at hand its pending and unread entries cannot be recovered`,
            )
          }
          const outbox = ctx.store.value
          recoveredThrough = yield* retryTransient(outbox.head(address), "reading the outbox head")
          recoveredAt = Date.now()
          if (loss.kind === "group") {
            return yield* Effect.logWarning(
              `redis-streams: group ${group} of ${stream} was deleted while its stream stayed; re-created at the start of the stream (events it already handled are skipped by its inbox)`,
            )
          }
          const from = floor ?? "beginning"
          const lostIdentity = identity
          identity = loss.to
          highestRead = "0-0"
          floor = undefined
          yield* Effect.logWarning(
            `redis-streams: stream ${stream} lost its data (identity ${lostIdentity} → ${loss.to}: Redis restarted without persistence, was flushed, or the stream was deleted); the pending and unread entries of group ${group} went with it; re-sending every event after ${from} from the outbox`,
          )
          // Handlers still running on entries of the lost stream finish and record their
          // events first, so the re-sent copies find them handled.
          const deadline = Date.now() + config.claimIdleMs
          while (held.size > 0 && Date.now() < deadline) yield* Effect.sleep(20)
          const resent = yield* retryTransient(
            resendAfter(ctx.relay.value, ctx.sendAll, address, from, config.pageSize),
            "re-sending from the outbox",
          )
          yield* Effect.logWarning(
            `redis-streams: group ${group} of ${stream} recovered: ${resent} event(s) re-sent from the outbox in ${Date.now() - startedAt} ms`,
          )
        })

      /** Attempt to report: a delivery the outbox held before the last recovery may have been handled already. */
      const attemptOf = (entry: RawEntry, attempt: number): number => {
        if (recoveredThrough === undefined || attempt >= 2 || Option.isNone(ctx.store)) return attempt
        const position = positionOf(entry)
        return position !== undefined && ctx.store.value.covers(recoveredThrough, position) !== false
          ? 2
          : attempt
      }

      const deadLetterEntry = (id: StreamId, reason: string, attempts: number) =>
        Effect.gen(function* () {
          // Listed first (idempotent), so `deadLetters` finds every dead-letter stream.
          yield* retryTransient(
            command("SADD", () => main.call("SADD", keys.deadLetterIndex, keys.deadLetter)),
            "indexing the dead-letter stream",
          )
          yield* retryTransient(
            recreateGroupOn(
              runScript(
                main,
                deadLetterScript,
                [stream, keys.deadLetter],
                [group, id, reason, attempts, new Date().toISOString(), consumer],
              ),
              0,
            ),
            "dead-lettering an entry",
          )
          yield* finish(id)
        })

      /** Hands one claimed entry to the handler (its in-flight slot is already taken). */
      const deliver = (entry: RawEntry, attempt: number): Effect.Effect<void, BusError> =>
        Effect.gen(function* () {
          const state: Held = { settled: false }
          held.set(entry.id, state)
          const reported = attemptOf(entry, attempt)
          const decoded = yield* decodeEntry(address, entry, { tag, identity }).pipe(
            Effect.map((event) => ({ event, reason: undefined })),
            Effect.catch((reason: string) => Effect.succeed({ event: undefined, reason })),
          )
          if (decoded.event === undefined) {
            yield* Effect.logWarning(
              `redis-streams: dead-lettering malformed entry ${entry.id} of ${stream}: ${decoded.reason}`,
            )
            return yield* deadLetterEntry(entry.id, `malformed entry: ${decoded.reason}`, reported)
          }
          const event = decoded.event
          const once = (effect: Effect.Effect<void, BusError>) =>
            Effect.suspend(() => {
              if (state.settled || held.get(entry.id) !== state) return Effect.void
              state.settled = true
              return effect
            })
          const delivery: Delivery = {
            event,
            attempt: reported,
            position: positionOf(entry),
            ack: once(
              retryTransient(
                recreateGroupOn(
                  command("XACK", () => main.call("XACK", stream, group, entry.id)),
                  0,
                ),
                "acknowledging an entry",
              ).pipe(Effect.andThen(finish(entry.id))),
            ),
            retry: (delayMs) =>
              once(
                Effect.sleep(Math.max(0, delayMs)).pipe(
                  Effect.andThen(redeliver(entry.id)),
                  Effect.catchCause((cause) => Queue.failCause(deliveries, cause)),
                  Effect.forkIn(scope),
                  Effect.asVoid,
                ),
              ),
            deadLetter: (reason) => once(deadLetterEntry(entry.id, reason, reported)),
            inProgress: Effect.suspend(() =>
              held.get(entry.id) === state && !state.settled
                ? retryTransient(recreateGroupOn(script(touchScript, [0, entry.id]), []), "renewing an entry")
                : Effect.void,
            ).pipe(Effect.asVoid),
          }
          yield* Queue.offer(deliveries, delivery)
        })

      /** After a retry delay: claims the entry to this member again (one more delivery) and hands it over. */
      const redeliver = (id: StreamId): Effect.Effect<void, BusError> =>
        Effect.gen(function* () {
          const claimed = parseClaimed(
            yield* retryTransient(
              recreateGroupOn(script(reclaimScript, [id]), []),
              "claiming an entry for a retry",
            ),
          )
          const again = claimed[0]
          // Gone (trimmed, or the group was lost) or taken over by another member: not ours to deliver.
          if (again === undefined) return yield* finish(id)
          yield* deliver(again.entry, again.deliveries)
        })

      /**
       * Delivers, in id order, every entry pending for this very consumer that it does not
       * hold: entries a read assigned whose reply was lost when a connection dropped (and
       * which ioredis's resent read then skipped). `fresh` are entries a read has just
       * returned: delivered as they are, in their place in the order; the others are
       * claimed back (one more delivery). `takeSlot` / `giveBack` manage in-flight slots.
       */
      const deliverOwnPending = (
        fresh: ReadonlyArray<RawEntry>,
        takeSlot: Effect.Effect<void>,
        giveBack: Effect.Effect<void>,
      ) =>
        Effect.gen(function* () {
          const reply = yield* command("XPENDING", () =>
            main.call("XPENDING", stream, group, "-", "+", 1_000, consumer),
          )
          const byId = new Map(fresh.map((e) => [e.id, e]))
          const ids = (Array.isArray(reply) ? reply : [])
            .map((row) => (Array.isArray(row) ? String(row[0]) : ""))
            .filter((id) => id !== "" && !held.has(id))
          for (const id of ids) {
            yield* takeSlot
            const entry = byId.get(id)
            if (entry !== undefined) {
              byId.delete(id)
              yield* deliver(entry, 1)
              continue
            }
            const again = parseClaimed(yield* script(reclaimScript, [id]))[0]
            if (again === undefined) yield* giveBack
            else yield* deliver(again.entry, again.deliveries)
          }
          for (const entry of byId.values()) {
            if (held.has(entry.id)) continue
            yield* takeSlot
            yield* deliver(entry, 1)
          }
        })

      const recoverOwnPending = deliverOwnPending(
        [],
        Semaphore.take(permits, 1),
        Semaphore.release(permits, 1),
      )

      /**
       * After a dropped connection or a failed round: does the stream still reach the newest
       * entry this member read? A replica promoted in a failover may lack its master's newest
       * entries (replication is asynchronous); the identity then moves on (see the feed's
       * `checkTail`) and the member recovers like after any loss: re-sends from the floor.
       */
      const checkTail = Effect.gen(function* () {
        if (highestRead === "0-0") return
        const at = yield* streamPosition(main, stream)
        // A stream that is gone entirely is the identity check's case (it reports it as such).
        if (at.last === "0-0" || compareStreamIds(at.last, highestRead) >= 0) return
        yield* Effect.logWarning(
          `redis-streams: stream ${stream} lost its newest entries (it ends at ${at.last}, member ${consumer} of ${group} had read up to ${highestRead}: a failover to a replica that was behind)`,
        )
        const current = yield* streamIdentity(main, keys, identity, true)
        highestRead = "0-0"
        if (current !== identity) pendingLoss = { kind: "stream", to: current }
      })

      let claimStart: StreamId = "0-0"
      let nextClaimAt = 0

      /** One round of the read loop: take free slots, claim stuck entries, then read new ones. */
      const readRound = Effect.gen(function* () {
        const lossesAtStart = lossCount()
        yield* Semaphore.take(permits, 1)
        let slots = 1
        while (slots < maxInFlight && (yield* Semaphore.takeIfAvailable(permits, 1))) slots++
        let used = 0
        const use = (entry: RawEntry, attempt: number) =>
          Effect.suspend(() => {
            used++
            return deliver(entry, attempt)
          })
        yield* Effect.gen(function* () {
          let scanning = false
          if (Date.now() >= nextClaimAt) {
            const reply = yield* script(autoclaimScript, [config.claimIdleMs, claimStart, slots])
            const [next, rows] = Array.isArray(reply) ? reply : []
            claimStart = typeof next === "string" ? next : "0-0"
            scanning = claimStart !== "0-0"
            if (!scanning) nextClaimAt = Date.now() + claimEveryMs
            for (const { entry, deliveries: count } of parseClaimed(rows)) {
              // XAUTOCLAIM may return entries this member holds (it was slow to renew them):
              // they are still being handled here, so they are not delivered twice.
              if (held.has(entry.id)) continue
              yield* use(entry, count)
            }
          }
          if (used >= slots) return
          const block = scanning ? [] : ["BLOCK", config.blockMs]
          const read = yield* readWithIdentity(
            "XREADGROUP",
            conn,
            ["XREADGROUP", "GROUP", group, consumer, "COUNT", slots - used, ...block, "STREAMS", stream, ">"],
            keys,
            config.blockMs + replyMarginMs,
          )
          if (read.identity !== identity) {
            // The stream was replaced: what this read assigned stays pending for this member
            // and is delivered after the recovery (own pending entries are read again).
            const current = read.identity ?? (yield* streamIdentity(main, keys))
            if (current !== identity) pendingLoss = { kind: "stream", to: current }
            return
          }
          const entries = parseReadReply(read.reply)
          const newest = entries[entries.length - 1]
          if (newest !== undefined && compareStreamIds(newest.id, highestRead) > 0) highestRead = newest.id
          if (lossCount() === lossesAtStart) {
            for (const entry of entries) yield* use(entry, 1)
            return
          }
          // A connection dropped during this round: ioredis sent the read again, and the
          // entries the first one assigned may be pending here without a reply. Deliver all
          // of this member's pending entries in order, so none overtakes an earlier one.
          yield* deliverOwnPending(
            entries,
            Effect.suspend(() => {
              if (used < slots) {
                used++
                return Effect.void
              }
              return Semaphore.take(permits, 1)
            }),
            Semaphore.release(permits, 1),
          )
        }).pipe(Effect.ensuring(Effect.suspend(() => Semaphore.release(permits, Math.max(0, slots - used)))))
      })

      // One round per turn. A failed turn is retried on core's schedule (its count starts
      // again after every round that went through); every failure makes the next round
      // recover first (its own pending entries, the stream's tail).
      let recover = true
      let seenLosses = lossCount()
      const round = Effect.gen(function* () {
        if (lossCount() !== seenLosses) recover = true
        if (recover && pendingLoss === undefined) yield* checkTail
        if (pendingLoss !== undefined) {
          const loss = pendingLoss
          yield* recoverLoss(loss)
          if (pendingLoss === loss) pendingLoss = undefined
          recover = true
        }
        if (recover) {
          seenLosses = lossCount()
          yield* recoverOwnPending
          recover = false
        }
        yield* readRound
      }).pipe(
        Effect.catch((error: BusError) => {
          recover = true
          // A group deleted under its members: made again, and the next round goes on at once.
          return isNoGroup(error) ? retryTransient(groupGone, "re-creating the group") : Effect.fail(error)
        }),
      )
      const readLoop = Effect.forever(retryTransient(round, `group ${group} read on ${stream}`))

      /** Renews held entries so no other member claims them, and deletes long-idle empty consumers. */
      const maintenance = Effect.gen(function* () {
        let nextCleanupAt = Date.now() + Math.min(config.consumerIdleMs, 60_000)
        let nextFloorAt = Date.now() + claimEveryMs
        for (;;) {
          yield* Effect.sleep(Math.min(heartbeatMs, claimEveryMs))
          if (Date.now() >= nextFloorAt) {
            nextFloorAt = Date.now() + claimEveryMs
            yield* sampleFloor
          }
          const ids = [...held.keys()]
          if (ids.length > 0) {
            const kept = yield* script(touchScript, [0, ...ids]).pipe(
              Effect.map((reply) => new Set(Array.isArray(reply) ? reply.map(String) : [])),
              Effect.catch((error: BusError) =>
                Effect.logDebug("redis-streams: renewing held entries failed", error.message).pipe(
                  Effect.as(undefined),
                ),
              ),
            )
            // After a loss, entries of the lost stream are no longer pending anywhere: not claimed.
            const lost =
              kept === undefined || pendingLoss !== undefined || Date.now() - recoveredAt < config.claimIdleMs
                ? []
                : ids.filter((id) => !kept.has(id) && held.has(id))
            if (lost.length > 0) {
              yield* Effect.logWarning(
                `redis-streams: ${lost.length} entr${lost.length === 1 ? "y" : "ies"} of ${stream} held by ${consumer} ${lost.length === 1 ? "was" : "were"} claimed by another member of ${group} (this member was unresponsive for over claimIdleMs); they may be handled twice`,
              )
            }
          }
          if (Date.now() >= nextCleanupAt) {
            nextCleanupAt = Date.now() + Math.min(config.consumerIdleMs, 60_000)
            yield* runScript(main, cleanupScript, [stream], [group, config.consumerIdleMs, consumer]).pipe(
              Effect.catch((error: BusError) =>
                Effect.logDebug("redis-streams: consumer cleanup failed", error.message),
              ),
            )
          }
        }
      })

      // Runs after the loops below are interrupted (finalizers run in reverse order): hand
      // back what this member still holds, then leave the group if nothing is pending.
      yield* Effect.addFinalizer(() =>
        Effect.gen(function* () {
          // A read sent on the read connection (XREADGROUP … BLOCK) outlives the loop that
          // sent it: the server may still assign an entry to this consumer, unseen, which would
          // wait claimIdleMs for another member while later entries overtake it (the next
          // member of the address reads ">" at once). So the server drops the read connection
          // first (CLIENT KILL: after it returns, nothing more is assigned through it), then
          // every entry pending for this consumer is handed back, held or not.
          yield* killOnServer(main, conn)
          conn.disconnect()
          const pending = yield* command("XPENDING", () =>
            main.call("XPENDING", stream, group, "-", "+", 1_000, consumer),
          ).pipe(Effect.orElseSucceed(() => []))
          const ids = new Set(held.keys())
          for (const row of Array.isArray(pending) ? pending : [])
            if (Array.isArray(row)) ids.add(String(row[0]))
          held.clear()
          if (ids.size > 0) yield* script(touchScript, [handBackIdleMs, ...ids])
          yield* runScript(main, retireScript, [stream], [group, consumer])
        }).pipe(
          Effect.timeout("2 seconds"),
          Effect.catchCause((cause) =>
            Effect.logDebug(
              "redis-streams: leaving the group cleanly failed; entries are claimed after claimIdleMs",
              cause,
            ),
          ),
        ),
      )
      yield* readLoop.pipe(
        Effect.catchCause((cause) => Queue.failCause(deliveries, cause)),
        Effect.forkScoped,
      )
      yield* maintenance.pipe(Effect.forkScoped)
      return Stream.fromQueue(deliveries)
    }),
  )
