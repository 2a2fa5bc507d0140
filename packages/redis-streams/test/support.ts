// The same polling, naming and counting helpers the conformance suite uses.
import { type Address, orderViolations, Tally, uniqueAddress, uniqueName, waitFor } from "@bus/conformance"
import { type Bus, type BusError, createBus, type EventInput, type MemoryOutbox } from "@bus/core"
import {
  type OutboxServices,
  outboxLayer,
  type RelayClaim,
  type RelayLog,
  type RelayOptions,
} from "@bus/core/adapter"
import { Effect, type Layer } from "effect"
import { Redis } from "ioredis"
import { afterEach, beforeEach, vi } from "vitest"
import type { RedisStreamsOptions } from "../src/index.js"
import { redisStreams } from "../src/index.js"

export { type Address, orderViolations, Tally, uniqueAddress, uniqueName, waitFor }

/** `n` events of one transaction carrying `{ tx, seq }`. */
export const txEvents = (a: Address, tx: string, n: number, type = "test.step"): Array<EventInput> =>
  Array.from({ length: n }, (_, seq) => ({ ...a, type, data: { tx, seq } }))

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
      outbox,
      transport: { use: "redis-streams", broker: redisStreams(options) },
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

/**
 * The outbox store of `outbox` for one relay process that a test can kill. After `kill()`
 * nothing that process would still tell the store arrives (a stored position, a lease
 * renewal or release on interruption, a heartbeat), as for a process that died: the
 * interrupted relay runs its finalizers, but its partitions stay leased until the lease
 * runs out. The dead relay is never told (its calls succeed), as in core's test support.
 */
export const killableStore = (
  outbox: MemoryOutbox,
): { readonly layer: Layer.Layer<OutboxServices>; readonly kill: () => void } => {
  let dead = false
  const alive = <A>(effect: Effect.Effect<A, BusError>, ifDead: A) =>
    Effect.suspend(() => (dead ? Effect.succeed(ifDead) : effect))
  const inner = outbox.store.relay
  const relay: RelayLog = {
    ...inner,
    claim: (partition, owner, leaseMs) =>
      alive(inner.claim(partition, owner, leaseMs), undefined).pipe(
        Effect.map((claim) =>
          claim === undefined
            ? undefined
            : ({
                ...claim,
                commit: (state) => alive(claim.commit(state), true),
                renew: alive(claim.renew, true),
              } satisfies RelayClaim),
        ),
      ),
    release: (partition, owner) => alive(inner.release(partition, owner), undefined),
    heartbeat: (owner, leaseMs) => alive(inner.heartbeat(owner, leaseMs), 1),
  }
  return {
    layer: outboxLayer({ ...outbox.store, relay }),
    kill: () => {
      dead = true
    },
  }
}

/**
 * The SDK's log lines that contain one of `marks`, captured from the default logger
 * (console.log) for each test of the file (call at the top level of a test file); the lines
 * still go to the console.
 */
export const captureLogs = (...marks: ReadonlyArray<string>): { readonly lines: Array<string> } => {
  const captured = { lines: [] as Array<string> }
  beforeEach(() => {
    captured.lines = []
    const log = console.log.bind(console)
    vi.spyOn(console, "log").mockImplementation((...args: Array<unknown>) => {
      const line = args.map(String).join(" ")
      if (marks.some((m) => line.includes(m))) captured.lines.push(line)
      log(...args)
    })
  })
  afterEach(() => {
    vi.restoreAllMocks()
  })
  return captured
}
