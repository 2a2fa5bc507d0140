import { randomUUID } from "node:crypto"
import { type BusError, CursorInvalid, type DeliveredEvent, NotInTransaction } from "@bus/core"
import {
  type Address,
  addressTag,
  cursorOfAnotherAddress,
  type Envelope,
  type Outbox,
  OutboxReader,
  OutboxWriter,
  outboxTransport,
} from "@bus/core/adapter"
import { Context, Effect, Layer, PubSub, Stream } from "effect"

/**
 * The smallest outbox a new database starts with (docs/new-transport.md): an
 * {@link OutboxWriter} and an {@link OutboxReader} over rows kept in memory, one layer
 * providing both, and the core's outbox transport reading it. No relay log, consumer groups,
 * dead letters or retention: its bus serves `publish` and `subscribe`, its transport
 * declares `consumerGroups: false`, and the conformance suite runs what that bus can pass.
 * A real database replaces the array with a table, `commit` with the driver's COMMIT and
 * the PubSub with its notifications.
 */

/** A producer transaction: appended events wait here until commit. */
export class ExampleTransaction {
  readonly pending: Array<Envelope> = []
  open = true
}

interface Row {
  readonly envelope: Envelope
  readonly position: number
}

/** `ex1:<address tag>:<epoch>:<position>`: bound to its address and to this store's life. */
const cursorPattern = /^ex1:([0-9a-f]{8}):([0-9a-f]{8}):(\d{1,16})$/

const keyOf = (a: Address): string => `${a.tenant}\u0000${a.channel}`

export class ExampleOutbox implements Outbox {
  /** Its own transport reuses the in-memory transport's name (what `"auto"` keeps). */
  readonly transport = "memory" as const
  readonly #byAddress = new Map<string, Array<Row>>()
  #position = 0
  readonly #epoch = randomUUID().slice(0, 8)
  // Drained at once by the transport into per-address wake-ups of capacity one (as the
  // in-memory outbox's): its size is the commits of one tick, not a backlog.
  readonly #changes = Effect.runSync(PubSub.unbounded<Address>())

  /** Runs `fn` in a transaction: committed when it resolves, rolled back when it throws. */
  async transaction<A>(fn: (tx: ExampleTransaction) => Promise<A>): Promise<A> {
    const tx = new ExampleTransaction()
    try {
      const result = await fn(tx)
      this.#commit(tx.pending)
      return result
    } finally {
      tx.open = false
    }
  }

  /** Commit: every appended event becomes visible at once, in append order. */
  #commit(events: ReadonlyArray<Envelope>): void {
    const touched = new Map<string, Address>()
    for (const envelope of events) {
      const key = keyOf(envelope)
      const rows = this.#byAddress.get(key) ?? []
      rows.push({ envelope, position: ++this.#position })
      this.#byAddress.set(key, rows)
      touched.set(key, { tenant: envelope.tenant, channel: envelope.channel })
    }
    for (const address of touched.values()) PubSub.publishUnsafe(this.#changes, address)
  }

  #cursor(address: Address, position: number): string {
    return `ex1:${addressTag(address)}:${this.#epoch}:${position}`
  }

  /** The position of `cursor` for `address`; anything else is refused, never read as "beginning". */
  #positionOf(cursor: string, address: Address): Effect.Effect<number, BusError> {
    if (cursor === "beginning") return Effect.succeed(0)
    const m = cursorPattern.exec(cursor)
    if (m === null || Number(m[3]) > this.#position) {
      return Effect.fail(
        new CursorInvalid({ cursor, reason: "malformed", message: "not a cursor of this outbox" }),
      )
    }
    if (m[1] !== addressTag(address)) return Effect.fail(cursorOfAnotherAddress(cursor, address))
    if (m[2] !== this.#epoch) {
      return Effect.fail(
        new CursorInvalid({ cursor, reason: "foreign", message: "cursor of another outbox" }),
      )
    }
    return Effect.succeed(Number(m[3]))
  }

  readonly writer: OutboxWriter["Service"] = {
    name: "example",
    append: (tx, events) =>
      tx instanceof ExampleTransaction && tx.open
        ? Effect.sync(() => void tx.pending.push(...events))
        : Effect.fail(new NotInTransaction({ message: "publish needs an open transaction of this outbox" })),
  }

  readonly reader: OutboxReader["Service"] = {
    name: "example",
    read: (address, after, limit) =>
      Effect.map(this.#positionOf(after, address), (from) => {
        const events: Array<DeliveredEvent> = []
        let next = from
        for (const row of this.#byAddress.get(keyOf(address)) ?? []) {
          if (row.position <= from) continue
          if (events.length >= limit) return { events, next: this.#cursor(address, next), more: true }
          events.push({ ...row.envelope, cursor: this.#cursor(address, row.position) })
          next = row.position
        }
        // An empty or last page advances to the head: reading from it continues without gap.
        return { events, next: this.#cursor(address, this.#position), more: false }
      }),
    head: (address) => Effect.sync(() => this.#cursor(address, this.#position)),
    changes: Stream.fromPubSub(this.#changes),
    // Every commit signals its addresses: nothing to register.
    watch: () => Effect.void,
    ownsCursor: (cursor) => cursorPattern.exec(cursor)?.[2] === this.#epoch,
    // No relay log, so no relay positions to compare with.
    covers: () => undefined,
  }

  /** The outbox's services in one layer, and the core's outbox transport over its reader. */
  layers() {
    return {
      outbox: Layer.succeedContext(
        Context.make(OutboxWriter, this.writer).pipe(Context.add(OutboxReader, this.reader)),
      ),
      transport: outboxTransport({ name: "memory" }),
    }
  }
}
