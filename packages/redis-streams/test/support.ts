import {
  type Bus,
  createBus,
  type DeliveredEvent,
  type EventInput,
  type MemoryOutbox,
  type RelayOptions,
} from "@bus/core"
// The same polling and naming helpers the conformance suite uses.
import { uniqueName, waitFor } from "@bus/test-infra/conformance"
import { Redis } from "ioredis"
import { type RedisStreamsOptions, redisStreamsTransport } from "../src/index.js"

export { uniqueName, waitFor }

export interface Address {
  readonly tenant: string
  readonly channel: string
}

export const uniqueAddress = (): Address => ({ tenant: uniqueName("t"), channel: uniqueName("c") })

/** `n` events of one transaction carrying `{ tx, seq }`. */
export const txEvents = (a: Address, tx: string, n: number, type = "test.step"): Array<EventInput> =>
  Array.from({ length: n }, (_, seq) => ({ ...a, type, data: { tx, seq } }))

/** Counts how often each id was seen. */
export class Tally {
  readonly counts = new Map<string, number>()
  readonly events: Array<DeliveredEvent> = []
  add(e: DeliveredEvent): void {
    this.counts.set(e.id, (this.counts.get(e.id) ?? 0) + 1)
    this.events.push(e)
  }
  has(id: string): boolean {
    return this.counts.has(id)
  }
  hasAll(ids: Iterable<string>): boolean {
    for (const id of ids) if (!this.counts.has(id)) return false
    return true
  }
  missing(ids: Iterable<string>): Array<string> {
    return [...ids].filter((id) => !this.counts.has(id))
  }
  get duplicates(): Array<string> {
    return [...this.counts].filter(([, n]) => n > 1).map(([id]) => id)
  }
  get distinct(): number {
    return this.counts.size
  }
}

/** Everything a test opens, closed newest first in `close()` (call it in `finally`). */
export class Resources {
  readonly #closers: Array<() => Promise<unknown> | unknown> = []
  defer(close: () => Promise<unknown> | unknown): void {
    this.#closers.push(close)
  }
  /** A plain ioredis client (admin / raw access), closed with the resources. */
  redis(url: string): Redis {
    const client = new Redis(url, { maxRetriesPerRequest: null })
    client.on("error", () => {})
    this.defer(() => client.quit().catch(() => client.disconnect()))
    return client
  }
  /** A bus on the Redis transport over `outbox`, closed with the resources. */
  async bus(
    outbox: MemoryOutbox,
    options: RedisStreamsOptions,
    relay: RelayOptions | false = { maxIdleMs: 100 },
  ): Promise<Bus> {
    const bus = await createBus({
      outbox: outbox.layer,
      transports: { "redis-streams": redisStreamsTransport(options) },
      transport: "redis-streams",
      env: false,
      relay,
    })
    this.defer(() => bus.close())
    return bus
  }
  /** Reads a subscription into a tally in the background; closed with the resources. */
  collect(bus: Bus, a: Address, from: string): Tally & { error?: unknown; ended: boolean } {
    const sub = bus.subscribe({ ...a, from })
    const tally = Object.assign(new Tally(), { error: undefined as unknown, ended: false })
    const done = (async () => {
      try {
        for await (const e of sub) tally.add(e)
      } catch (error) {
        tally.error = error
      } finally {
        tally.ended = true
      }
    })()
    this.defer(async () => {
      await sub.close()
      await done
    })
    return tally
  }
  async close(): Promise<void> {
    const errors: Array<unknown> = []
    for (const close of this.#closers.splice(0).reverse()) {
      try {
        await close()
      } catch (error) {
        errors.push(error)
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, "closing test resources failed")
  }
}

/** Publishes `events` in one committed transaction of `outbox`; returns their ids. */
export const publish = async (
  bus: Bus,
  outbox: MemoryOutbox,
  events: EventInput | ReadonlyArray<EventInput>,
): Promise<ReadonlyArray<string>> => (await outbox.transaction((tx) => bus.publish(tx, events))).ids

/** Stream entries' event ids, in stream order. */
export const streamEventIds = async (redis: Redis, key: string): Promise<Array<string>> => {
  const entries = (await redis.xrange(key, "-", "+")) as Array<[string, Array<string>]>
  return entries.map(([, fields]) => fields[fields.indexOf("id") + 1] ?? "")
}

/** Ids that occur more than once. */
export const duplicatesOf = (ids: ReadonlyArray<string>): Array<string> => {
  const seen = new Set<string>()
  const dup = new Set<string>()
  for (const id of ids) {
    if (seen.has(id)) dup.add(id)
    seen.add(id)
  }
  return [...dup]
}

/** Places where events of one transaction (`{ tx, seq }` data) arrived out of order. */
export const orderViolations = (events: ReadonlyArray<DeliveredEvent>): Array<string> => {
  const last = new Map<string, number>()
  const bad: Array<string> = []
  for (const e of events) {
    const data = e.data as { tx?: unknown; seq?: unknown } | null
    if (typeof data?.tx !== "string" || typeof data.seq !== "number") continue
    const prev = last.get(data.tx)
    if (prev !== undefined && data.seq <= prev) bad.push(`${data.tx}: seq ${data.seq} after ${prev}`)
    last.set(data.tx, data.seq)
  }
  return bad
}
