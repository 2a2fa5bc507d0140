import { randomUUID } from "node:crypto"
import { Effect, Layer, PubSub, Semaphore, Stream } from "effect"
import { addressTag } from "../contracts/cursor.js"
import {
  type Address,
  type CompleteOutbox,
  type DeadLetter,
  type DeadLetterStore,
  type GroupClaim,
  type GroupMembership,
  type GroupStore,
  type MemberKey,
  type OutboxReader,
  type OutboxRetention,
  type OutboxServices,
  type OutboxWriter,
  outboxContext,
  type RelayClaim,
  type RelayedEvent,
  type RelayLog,
  type RelayState,
} from "../contracts/outboxStore.js"
import type { Outbox, OutboxLayers } from "../contracts/wiring.js"
import { cursorOfAnotherAddress } from "../flip/flip.js"
import type { TransportChoice } from "../model/config.js"
import type { DeliveredEvent, Envelope } from "../model/envelope.js"
import { CursorInvalid, NotInTransaction } from "../model/errors.js"
import { outboxTransport } from "../outboxTransport/transport.js"

/** `mem1:<epoch>:<position>` or `mem2:<address>:<epoch>:<position>`: groups address, epoch, position. */
const cursorPattern = /^mem(?:1|2:([0-9a-f]{8})):([0-9a-f]{8}):(\d{1,16})$/

/**
 * The in-memory outbox: a faithful reference of the outbox contract for users' unit
 * tests. Events published in a {@link MemoryTransaction} become visible on commit and
 * vanish on rollback; cursors, relay partitions, consumer groups, dead letters and
 * retention behave as on Postgres. Nothing survives the process.
 *
 * @module
 */

/** A transaction of the in-memory outbox; pass it to `publish` as `tx`. */
export class MemoryTransaction {
  /** Events appended in this transaction, visible to nobody until commit. */
  readonly pending: Array<Envelope> = []
  #state: "open" | "committed" | "rolled-back" = "open"
  constructor(readonly outbox: MemoryOutbox) {}
  /** `open` until commit or rollback. */
  get state(): "open" | "committed" | "rolled-back" {
    return this.#state
  }
  /** Makes every appended event visible at once, in append order. */
  commit(): void {
    if (this.#state !== "open") throw new Error(`transaction already ${this.#state}`)
    this.#state = "committed"
    this.outbox.commitBatch(this.pending)
  }
  /** Discards every appended event. */
  rollback(): void {
    if (this.#state !== "open") throw new Error(`transaction already ${this.#state}`)
    this.#state = "rolled-back"
    this.pending.length = 0
  }
}

interface Row {
  readonly envelope: Envelope
  readonly position: number
  readonly committedAt: number
  readonly partition: number
}

interface PartitionRow {
  state: RelayState
  owner: string | undefined
  leaseUntil: number
}

/** FNV-1a over the address: the partition of an address, the same in every process. */
const partitionOf = (a: Address, partitions: number): number => {
  let h = 0x811c9dc5
  const text = `${a.tenant}/${a.channel}`
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0) % partitions
}

interface GroupState {
  cursor: string
  readonly lock: Semaphore.Semaphore
  /** Handled event ids and when, oldest first: the group's inbox. */
  readonly inbox: Map<string, number>
}

const addressKey = (a: Address): string => `${a.tenant}\u0000${a.channel}`

/**
 * State of one in-memory outbox. Build one per test with {@link MemoryOutbox.make} and
 * provide it with {@link MemoryOutbox.layer}.
 */
export class MemoryOutbox implements Outbox {
  /** The in-memory transport reads this outbox directly, as postgres-notify reads Postgres. */
  readonly transport = "memory" as const

  /** The outbox and its own transport, for `createBus({ outbox: memoryOutbox() })`. */
  layers(_choice: TransportChoice): OutboxLayers {
    return {
      outbox: this.layer,
      transport: outboxTransport({ name: "memory", capabilities: { needsRelay: false } }),
    }
  }

  #epoch = randomUUID().slice(0, 8)
  /** Changes with every new outbox (and {@link MemoryOutbox.rotateEpoch}), so cursors from another instance are recognised as foreign. */
  get epoch(): string {
    return this.#epoch
  }
  /**
   * Gives the outbox a new epoch, as the Postgres outbox's `rotateEpoch` does after a
   * restore: every cursor issued before is refused as `foreign`. Returns the new epoch.
   */
  rotateEpoch(): string {
    this.#epoch = randomUUID().slice(0, 8)
    return this.#epoch
  }
  readonly #rows: Array<Row> = []
  readonly #byAddress = new Map<string, Array<Row>>()
  readonly #groups = new Map<string, GroupState>()
  readonly #deadLetters: Array<DeadLetter> = []
  /** Relay partitions (see `RelayLog`); 4, so tests see addresses spread over several. */
  readonly partitions = 4
  readonly #partitions: Array<PartitionRow>
  readonly #relays = new Map<string, number>()
  /** Members of groups across tenants: `channel\0group` → member → live until (ms). */
  readonly #members = new Map<string, Map<string, number>>()
  /** Their address leases: `channel\0group` → tenant → member. */
  readonly #addressLeases = new Map<string, Map<string, string>>()
  #position = 0
  /** Lowest position still retained; cursors below it are expired. */
  #retainedFrom = 0
  readonly #changes = Effect.runSync(PubSub.unbounded<Address>())
  readonly #relayWakeups = Effect.runSync(PubSub.sliding<number>(64))

  constructor() {
    this.#partitions = Array.from({ length: this.partitions }, () => ({
      state: { position: this.#cursor(0), ahead: {}, fresh: true },
      owner: undefined,
      leaseUntil: 0,
    }))
  }

  /** A new, empty outbox. */
  static make(): MemoryOutbox {
    return new MemoryOutbox()
  }

  /** Runs `fn` in a transaction: committed when it resolves, rolled back when it throws. */
  async transaction<A>(fn: (tx: MemoryTransaction) => Promise<A> | A): Promise<A> {
    const tx = new MemoryTransaction(this)
    try {
      const result = await fn(tx)
      tx.commit()
      return result
    } catch (error) {
      if (tx.state === "open") tx.rollback()
      throw error
    }
  }

  /** Starts a transaction to commit or roll back by hand. */
  begin(): MemoryTransaction {
    return new MemoryTransaction(this)
  }

  /** @internal Called by {@link MemoryTransaction.commit}. */
  commitBatch(events: ReadonlyArray<Envelope>): void {
    const now = Date.now()
    const touched = new Map<string, Address>()
    for (const envelope of events) {
      const row: Row = {
        envelope,
        position: ++this.#position,
        committedAt: now,
        partition: partitionOf(envelope, this.partitions),
      }
      this.#rows.push(row)
      const key = addressKey(envelope)
      let list = this.#byAddress.get(key)
      if (!list) {
        list = []
        this.#byAddress.set(key, list)
      }
      list.push(row)
      touched.set(key, { tenant: envelope.tenant, channel: envelope.channel })
    }
    for (const address of touched.values()) Effect.runSync(PubSub.publish(this.#changes, address))
    for (const partition of new Set([...touched.values()].map((a) => partitionOf(a, this.partitions))))
      PubSub.publishUnsafe(this.#relayWakeups, partition)
  }

  /** Every committed event, in commit order (for assertions in tests). */
  committed(): ReadonlyArray<Envelope> {
    return this.#rows.map((r) => r.envelope)
  }

  /**
   * `mem1:<epoch>:<position>` for relay positions and frontiers (they span addresses);
   * `mem2:<address>:<epoch>:<position>` for a subscriber's cursor, which names its address
   * ({@link addressTag}): positions are shared by every address, so a cursor of one channel
   * read for another would skip that channel's events in between. `mem1:` cursors handed
   * out before the tag existed are still read, unchecked.
   */
  #cursor(position: number, tag?: string): string {
    return tag === undefined ? `mem1:${this.epoch}:${position}` : `mem2:${tag}:${this.epoch}:${position}`
  }

  /** The position of `cursor`, read for `address` (unset for the relay's own positions). */
  #parseCursor(cursor: string, address?: Address): Effect.Effect<number, CursorInvalid> {
    if (cursor === "beginning") return Effect.succeed(this.#retainedFrom)
    const m = cursorPattern.exec(cursor)
    if (!m) {
      return Effect.fail(
        new CursorInvalid({ cursor, reason: "malformed", message: "not a cursor of the in-memory outbox" }),
      )
    }
    if (m[1] !== undefined && address !== undefined && m[1] !== addressTag(address)) {
      return Effect.fail(cursorOfAnotherAddress(cursor, address))
    }
    if (m[2] !== this.epoch) {
      return Effect.fail(
        new CursorInvalid({
          cursor,
          reason: "foreign",
          message: "cursor comes from another in-memory outbox",
        }),
      )
    }
    const position = Number(m[3])
    if (position > this.#position) {
      return Effect.fail(
        new CursorInvalid({ cursor, reason: "malformed", message: "cursor is ahead of the outbox" }),
      )
    }
    if (position < this.#retainedFrom) {
      return Effect.fail(
        new CursorInvalid({
          cursor,
          reason: "expired",
          message: "cursor is older than the retained events; resume from the beginning or the head",
        }),
      )
    }
    return Effect.succeed(position)
  }

  /** `[epoch, position]` of a cursor or position of this store's format (any epoch or address). */
  static #parts(text: string): readonly [string, number] | undefined {
    const m = cursorPattern.exec(text)
    return m ? [m[2]!, Number(m[3])] : undefined
  }

  /** Whether the row is covered by its partition's relay positions (forwarded or parked). */
  #relayed(row: Row): boolean {
    const state = this.#partitions[row.partition]!.state
    const at = (cursor: string | undefined) =>
      cursor === undefined ? 0 : (MemoryOutbox.#parts(cursor)?.[1] ?? 0)
    return (
      row.position <=
      Math.max(at(state.position), at(state.ahead[`${row.envelope.tenant}/${row.envelope.channel}`]))
    )
  }

  #claim(partition: number, owner: string): RelayClaim {
    const row = this.#partitions[partition]!
    const held = (leaseMs: number) => {
      if (row.owner !== owner) return false
      row.leaseUntil = Date.now() + leaseMs
      return true
    }
    const leaseMs = row.leaseUntil - Date.now()
    return {
      partition,
      state: row.state,
      commit: (state) =>
        Effect.sync(() => {
          if (!held(leaseMs)) return false
          row.state = { position: state.position, ahead: state.ahead }
          return true
        }),
      renew: Effect.sync(() => held(leaseMs)),
    }
  }

  /** The relay's side of the contract over this state. */
  readonly #relay: RelayLog = {
    partitions: this.partitions,
    partitionOf: (address) => Effect.succeed(partitionOf(address, this.partitions)),
    heartbeat: (owner, leaseMs) =>
      Effect.sync(() => {
        const now = Date.now()
        this.#relays.set(owner, now + leaseMs)
        for (const [name, until] of this.#relays) if (until < now) this.#relays.delete(name)
        return this.#relays.size
      }),
    claim: (partition, owner, leaseMs) =>
      Effect.sync(() => {
        const row = this.#partitions[partition]
        if (row === undefined) return undefined
        const now = Date.now()
        if (row.owner !== undefined && row.owner !== owner && row.leaseUntil >= now) return undefined
        row.owner = owner
        row.leaseUntil = now + leaseMs
        return this.#claim(partition, owner)
      }),
    release: (partition, owner) =>
      Effect.sync(() => {
        const row = this.#partitions[partition]
        if (row?.owner === owner) {
          row.owner = undefined
          row.leaseUntil = 0
        }
      }),
    heldByOthers: (owner) =>
      Effect.sync(() => {
        const now = Date.now()
        return this.#partitions.flatMap((row, i) =>
          row.owner !== undefined && row.owner !== owner && row.leaseUntil >= now ? [i] : [],
        )
      }),
    read: (partition, after, limit, address) =>
      this.#parseCursor(after).pipe(
        Effect.map((from) => {
          const source = address === undefined ? this.#rows : (this.#byAddress.get(addressKey(address)) ?? [])
          const rows: Array<RelayedEvent> = []
          let next = from
          let more = false
          for (const row of source) {
            if (row.position <= from || row.partition !== partition) continue
            if (rows.length >= limit) {
              more = true
              break
            }
            // Positions are in commit order, so the row's own cursor covers exactly the rows
            // of its address read before it.
            const cursor = this.#cursor(row.position)
            rows.push({ event: row.envelope, position: cursor, frontier: cursor })
            next = row.position
          }
          if (!more) next = Math.max(next, this.#position)
          return { rows, next: this.#cursor(next), more }
        }),
      ),
    pending: (partition, after, from, limit) =>
      this.#parseCursor(after).pipe(
        Effect.map((position) => {
          const start = from === undefined ? "" : addressKey(from)
          const keys = [...this.#byAddress.keys()].filter((k) => k > start).sort()
          const addresses: Array<Address> = []
          for (const key of keys) {
            const rows = this.#byAddress.get(key)!
            const last = rows[rows.length - 1]
            if (last === undefined || last.partition !== partition || last.position <= position) continue
            if (addresses.length >= limit) return { addresses, complete: false }
            addresses.push({ tenant: last.envelope.tenant, channel: last.envelope.channel })
          }
          return { addresses, complete: true }
        }),
      ),
    backlog: Effect.sync(() => this.#rows.filter((row) => !this.#relayed(row)).length),
    wakeups: Stream.fromPubSub(this.#relayWakeups),
  }

  #group(address: Address, group: string): GroupState {
    const key = `${addressKey(address)}\u0000${group}`
    let state = this.#groups.get(key)
    if (!state) {
      state = { cursor: "beginning", lock: Semaphore.makeUnsafe(1), inbox: new Map() }
      this.#groups.set(key, state)
    }
    return state
  }

  /** Appends to a {@link MemoryTransaction} of this outbox (the `OutboxWriter` service). */
  readonly writer: OutboxWriter["Service"] = {
    name: "memory",
    append: (tx, events) =>
      Effect.suspend(() => {
        if (!(tx instanceof MemoryTransaction) || tx.outbox !== this) {
          return Effect.fail(
            new NotInTransaction({
              message:
                "publish needs a MemoryTransaction of this outbox (outbox.transaction(async (tx) => …))",
            }),
          )
        }
        if (tx.state !== "open") {
          return Effect.fail(new NotInTransaction({ message: `the transaction is already ${tx.state}` }))
        }
        tx.pending.push(...events)
        return Effect.void
      }),
  }

  /** Committed events by address and cursor (the `OutboxReader` service). */
  readonly reader: OutboxReader["Service"] = {
    name: "memory",
    read: (address, after, limit) =>
      this.#parseCursor(after, address).pipe(
        Effect.map((from) => {
          const tag = addressTag(address)
          const rows = this.#byAddress.get(addressKey(address)) ?? []
          const events: Array<DeliveredEvent> = []
          let next = from
          let more = false
          for (const row of rows) {
            if (row.position <= from) continue
            if (events.length >= limit) {
              more = true
              break
            }
            events.push({ ...row.envelope, cursor: this.#cursor(row.position, tag) })
            next = row.position
          }
          // An empty page still advances to the head, so the next read starts there.
          if (!more) next = Math.max(next, this.#position)
          return { events, next: this.#cursor(next, tag), more }
        }),
      ),
    head: (address) => Effect.sync(() => this.#cursor(this.#position, addressTag(address))),
    changes: Stream.fromPubSub(this.#changes),
    watch: () => Effect.void,
    ownsCursor: (cursor) => MemoryOutbox.#parts(cursor)?.[0] === this.epoch,
    covers: (cursor, position) => {
      const c = MemoryOutbox.#parts(cursor)
      const p = MemoryOutbox.#parts(position)
      if (c === undefined || p === undefined || c[0] !== this.epoch || p[0] !== this.epoch) return undefined
      return p[1] <= c[1]
    },
  }

  /** Consumer groups' positions, inboxes and membership (the `GroupStore` service). */
  readonly groups: GroupStore["Service"] = {
    claimGroup: (address, group) => {
      const state = this.#group(address, group)
      return Effect.gen(function* () {
        // Interruptible: a member waiting for the group must still stop when its consumer is closed.
        yield* Effect.acquireRelease(Effect.interruptible(Semaphore.take(state.lock, 1)), () =>
          Semaphore.release(state.lock, 1),
        )
        const claim: GroupClaim = {
          cursor: state.cursor,
          commit: (cursor, handled) =>
            Effect.sync(() => {
              state.cursor = cursor
              if (handled !== undefined) state.inbox.set(handled, Date.now())
            }),
        }
        return claim
      })
    },
    handled: (key, ids) =>
      Effect.sync(() => {
        const inbox = this.#group(key, key.group).inbox
        return new Set(ids.filter((id) => inbox.has(id)))
      }),
    markHandled: (key, ids) =>
      Effect.sync(() => {
        const inbox = this.#group(key, key.group).inbox
        const now = Date.now()
        for (const id of ids) if (!inbox.has(id)) inbox.set(id, now)
      }),
    groupCursor: (key) =>
      Effect.sync(() => {
        const cursor = this.#groups.get(`${addressKey(key)}\u0000${key.group}`)?.cursor
        return cursor === undefined || cursor === "beginning" ? undefined : cursor
      }),
    members: this.#membership,
  }

  /** Parked events (the `DeadLetterStore` service). */
  readonly deadLetterStore: DeadLetterStore["Service"] = {
    deadLetter: (letter) =>
      Effect.sync(() => {
        this.#deadLetters.push(letter)
        if (letter.source !== "relay") {
          const inbox = this.#group(letter.event, letter.source).inbox
          if (!inbox.has(letter.event.id)) inbox.set(letter.event.id, Date.now())
        }
      }),
    deadLetters: (limit) => Effect.sync(() => this.#deadLetters.slice(-limit).reverse()),
  }

  /** Pruning (the `OutboxRetention` service). */
  readonly retention: OutboxRetention["Service"] = {
    prune: (olderThanMs, options) =>
      Effect.sync(() => {
        const cutoff = Date.now() - olderThanMs
        let removed = 0
        while (this.#rows.length > 0) {
          const row = this.#rows[0]!
          if (row.committedAt > cutoff || (options.keepUnforwarded && !this.#relayed(row))) break
          this.#rows.shift()
          const list = this.#byAddress.get(addressKey(row.envelope))
          list?.shift()
          this.#retainedFrom = row.position
          removed++
        }
        for (const state of this.#groups.values()) {
          for (const [id, at] of state.inbox) {
            if (at > cutoff) break
            state.inbox.delete(id)
          }
        }
        return removed
      }),
  }

  /**
   * Every service of the outbox contract over this state, as one record (for tests that
   * wrap one service of it; {@link MemoryOutbox.layer} provides the services themselves).
   */
  readonly store: CompleteOutbox = {
    ...this.writer,
    ...this.reader,
    ...this.groups,
    ...this.deadLetterStore,
    ...this.retention,
    relay: this.#relay,
  }

  /** Group membership as on Postgres (see `GroupMembership`), with the process clock. */
  get #membership(): GroupMembership {
    const keyOf = (key: MemberKey) => `${key.channel}\u0000${key.group}`
    const membersOf = (key: MemberKey) => {
      let m = this.#members.get(keyOf(key))
      if (m === undefined) {
        m = new Map()
        this.#members.set(keyOf(key), m)
      }
      return m
    }
    const leasesOf = (key: MemberKey) => {
      let l = this.#addressLeases.get(keyOf(key))
      if (l === undefined) {
        l = new Map()
        this.#addressLeases.set(keyOf(key), l)
      }
      return l
    }
    const isLive = (key: MemberKey, member: string) => (membersOf(key).get(member) ?? 0) >= Date.now()
    return {
      tenants: (channel) =>
        Effect.sync(() => {
          const tenants = new Set<string>()
          for (const rows of this.#byAddress.values()) {
            const first = rows[0]?.envelope
            if (first !== undefined && first.channel === channel) tenants.add(first.tenant)
          }
          return [...tenants]
        }),
      heartbeat: (key, member, leaseMs) =>
        Effect.sync(() => {
          const members = membersOf(key)
          const now = Date.now()
          members.set(member, now + leaseMs)
          const others: Array<string> = []
          for (const [m, until] of members) {
            if (m === member) continue
            if (until < now) members.delete(m)
            else others.push(m)
          }
          const held = [...leasesOf(key)].filter(([, m]) => m === member).map(([t]) => t)
          return { others, held }
        }),
      lease: (key, member, tenants) =>
        Effect.sync(() => {
          if (!isLive(key, member)) return []
          const leases = leasesOf(key)
          const taken: Array<string> = []
          for (const t of tenants) {
            const holder = leases.get(t)
            if (holder === undefined || holder === member || !isLive(key, holder)) {
              leases.set(t, member)
              taken.push(t)
            }
          }
          return taken
        }),
      release: (key, member, tenants) =>
        Effect.sync(() => {
          const leases = leasesOf(key)
          for (const t of tenants) if (leases.get(t) === member) leases.delete(t)
        }),
      leave: (key, member) =>
        Effect.sync(() => {
          membersOf(key).delete(member)
          const leases = leasesOf(key)
          for (const [t, m] of leases) if (m === member) leases.delete(t)
        }),
    }
  }

  /**
   * Provides this outbox as every service of the outbox contract (`OutboxWriter`,
   * `OutboxReader`, `OutboxRelay`, `GroupStore`, `DeadLetterStore`, `OutboxRetention`): one
   * layer, as docs/new-transport.md describes for a new database.
   */
  get layer(): Layer.Layer<OutboxServices> {
    return Layer.succeedContext(
      outboxContext({
        writer: this.writer,
        reader: this.reader,
        relay: this.#relay,
        groups: this.groups,
        deadLetters: this.deadLetterStore,
        retention: this.retention,
      }),
    )
  }
}

/**
 * The in-memory outbox for unit tests: `createBus({ outbox: memoryOutbox() })`, then publish in
 * `outbox.transaction((tx) => bus.publish(tx, event))`. Same commit semantics, cursors,
 * consumer groups and dead letters as the Postgres outbox; nothing survives the process.
 *
 * @example
 * ```ts
 * import { createBus, memoryOutbox } from "@bus/core"
 *
 * const outbox = memoryOutbox()
 * const bus = await createBus({ outbox })
 * await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "orders", type: "order.paid", data: { id: 1 } }))
 * ```
 */
export const memoryOutbox = (): MemoryOutbox => new MemoryOutbox()
