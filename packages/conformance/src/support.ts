import { createHook } from "node:async_hooks"
import { randomBytes } from "node:crypto"
import { setTimeout as delay } from "node:timers/promises"
import type { Bus, Consumer, DeliveredEvent, EventInput, Subscription } from "@bus/core"
import type { ConsumeRequest, Json, StartPosition } from "@bus/core/adapter"
import type { SuiteContext } from "./target.js"

/**
 * Helpers shared by the conformance test groups: polling waits, unique names, a
 * background collector per subscription, and a session that closes everything a test
 * opened, even when the test fails.
 */

/** A tenant channel. */
export interface Address {
  readonly tenant: string
  readonly channel: string
}

/** Event type of the readiness probes that `Session.live` publishes; collectors keep them apart. */
export const probeType = "conformance.probe"
/** Event type of the trailing sentinels tests publish to know that earlier events had their chance. */
export const sentinelType = "conformance.sentinel"

/**
 * Polls `predicate` until it holds, with a short growing interval (2 ms up to 50 ms).
 * Fails after `timeoutMs` with `what` (evaluated at that moment) in the message. No timer
 * is left behind when it returns.
 */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string | (() => string) = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let interval = 2
  for (;;) {
    if (await predicate()) return
    if (Date.now() >= deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`,
      )
    }
    await delay(interval)
    interval = Math.min(50, interval * 2)
  }
}

/** Like {@link waitFor}, but reports whether the condition held instead of failing. */
export async function holdsWithin(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs: number,
): Promise<boolean> {
  try {
    await waitFor(predicate, timeoutMs)
    return true
  } catch {
    return false
  }
}

/** A name that passes the naming rule and is unique to this call: `prefix` + 12 hex digits. */
export const uniqueName = (prefix = "t"): string => `${prefix}${randomBytes(6).toString("hex")}`

/** A fresh address for one test, so parallel tests and repeated runs never share events. */
export const uniqueAddress = (): Address => ({ tenant: uniqueName("t"), channel: uniqueName("c") })

/** An event input for `address`. */
export const event = (
  address: Address,
  type: string,
  data: Json = null,
  extra: { readonly headers?: Record<string, string>; readonly id?: string } = {},
): EventInput => ({ tenant: address.tenant, channel: address.channel, type, data, ...extra })

/** `n` events of one transaction, each carrying `{ tx, seq }` so per-transaction order can be checked. */
export const txEvents = (
  address: Address,
  tx: string,
  n: number,
  type = "conformance.step",
): Array<EventInput> => Array.from({ length: n }, (_, seq) => event(address, type, { tx, seq }))

/** Error `_tag` of a rejection (the `BusError` family is tagged), or undefined. */
export const tagOf = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "_tag" in error
    ? String((error as { _tag: unknown })._tag)
    : undefined

/** Resolves with what `fn` throws or rejects with; fails when it succeeds. */
export async function rejectionOf(fn: () => unknown): Promise<unknown> {
  try {
    await fn()
  } catch (error) {
    return error
  }
  throw new Error("expected a rejection, but the call succeeded")
}

const dataField = (e: DeliveredEvent, key: string): unknown =>
  typeof e.data === "object" && e.data !== null && !Array.isArray(e.data)
    ? (e.data as Record<string, unknown>)[key]
    : undefined

/** Ids seen more than once in `events`. */
export const duplicateIds = (events: ReadonlyArray<{ readonly id: string }>): Array<string> => {
  const seen = new Set<string>()
  const dup = new Set<string>()
  for (const e of events) {
    if (seen.has(e.id)) dup.add(e.id)
    seen.add(e.id)
  }
  return [...dup]
}

/**
 * Places where events of one producer transaction arrived out of order (events carry
 * `{ tx, seq }`; events without them are ignored). Empty when order is kept.
 */
export const orderViolations = (events: ReadonlyArray<DeliveredEvent>): Array<string> => {
  const last = new Map<string, number>()
  const bad: Array<string> = []
  for (const e of events) {
    const tx = dataField(e, "tx")
    const seq = dataField(e, "seq")
    if (typeof tx !== "string" || typeof seq !== "number") continue
    const key = `${e.tenant}/${e.channel}/${tx}`
    const prev = last.get(key)
    if (prev !== undefined && seq <= prev) bad.push(`${key}: seq ${seq} after ${prev}`)
    last.set(key, seq)
  }
  return bad
}

/** Counts how often each id was handled; `duplicates` lists ids handled more than once. */
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

/**
 * Reads a subscription in the background into `events` (probes are kept apart in
 * `probes`). `ended`/`error` tell how the iteration stopped.
 */
export class Collector extends Tally {
  readonly probes = new Set<string>()
  error: unknown = undefined
  ended = false
  readonly done: Promise<void>
  constructor(
    readonly subscription: Subscription,
    readonly address: Address,
  ) {
    super()
    this.done = (async () => {
      try {
        for await (const e of subscription) {
          if (e.type === probeType) this.probes.add(String(dataField(e, "marker")))
          else this.add(e)
        }
      } catch (error) {
        this.error = error
      } finally {
        this.ended = true
      }
    })()
  }
  /** Ids in arrival order. */
  get ids(): Array<string> {
    return this.events.map((e) => e.id)
  }
  /** Closes the subscription and waits for the reading loop to stop. */
  async close(): Promise<void> {
    await this.subscription.close()
    await this.done
  }
}

type Handler = (event: DeliveredEvent, attempt: number) => Promise<void> | void

/**
 * Everything one test opens: buses, subscriptions, consumers. `close` releases them in
 * reverse order; {@link withSession} calls it in `finally`, so a failing test leaks nothing.
 */
export class Session {
  readonly #closers: Array<{ readonly what: string; readonly close: () => Promise<void> }> = []
  constructor(readonly ctx: SuiteContext) {}

  get target() {
    return this.ctx.target
  }

  /** A new bus of the target, closed with the session. */
  async bus(): Promise<Bus> {
    const bus = await this.target.makeBus()
    this.#closers.push({ what: "bus.close()", close: () => bus.close() })
    return bus
  }

  /** Registers extra cleanup. */
  defer(close: () => Promise<void>, what = "cleanup"): void {
    this.#closers.push({ what, close })
  }

  /** Subscribes and collects in the background; closed with the session. */
  subscribe(bus: Bus, address: Address, from: StartPosition = "beginning"): Collector {
    const c = new Collector(bus.subscribe({ ...address, from }), address)
    this.#closers.push({ what: "subscription.close()", close: () => c.close() })
    return c
  }

  /**
   * A subscription guaranteed to see every event committed after this resolves: from
   * `"beginning"` on a fresh address when the transport replays; otherwise from `"now"`,
   * probing until a probe comes through.
   */
  async live(bus: Bus, address: Address): Promise<Collector> {
    if (bus.capabilities.replay) return this.subscribe(bus, address, "beginning")
    const c = this.subscribe(bus, address, "now")
    await waitFor(
      async () => {
        const marker = uniqueName("p")
        await this.publish(bus, event(address, probeType, { marker }))
        return holdsWithin(() => c.probes.has(marker) || c.ended, 300)
      },
      this.ctx.deliveryTimeoutMs,
      `a probe on ${address.tenant}/${address.channel}`,
    )
    if (c.error !== undefined) throw c.error
    return c
  }

  /** A consumer-group member; closed with the session. */
  consume(bus: Bus, request: ConsumeRequest, handler: Handler): Consumer {
    const consumer = bus.consume(request, handler)
    this.#closers.push({ what: `consumer.close() (group ${request.group})`, close: () => consumer.close() })
    return consumer
  }

  /** Publishes `events` in one committed transaction of the target. */
  publish(
    bus: Bus,
    events: EventInput | ReadonlyArray<EventInput>,
  ): Promise<{ readonly ids: ReadonlyArray<string> }> {
    return this.target.transaction((tx) => bus.publish(tx, events))
  }

  /**
   * Closes everything, newest first, each close bounded by `closeTimeoutMs` (a close that
   * hangs is reported, and the rest are still closed); fails with every error at once.
   */
  async close(): Promise<void> {
    const errors: Array<unknown> = []
    for (const { what, close } of this.#closers.splice(0).reverse()) {
      try {
        await within(close(), this.ctx.closeTimeoutMs, what)
      } catch (error) {
        errors.push(error)
      }
    }
    if (errors.length === 1) throw errors[0]
    if (errors.length > 1) throw new AggregateError(errors, "closing the test's resources failed")
  }
}

/** Settles like `promise`, or fails when it takes longer than `ms` (the timer is cleared either way). */
export async function within<A>(promise: Promise<A>, ms: number, what: string): Promise<A> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Runs `fn` with a session and closes the session however `fn` ends. */
export async function withSession<A>(ctx: SuiteContext, fn: (s: Session) => Promise<A>): Promise<A> {
  const s = new Session(ctx)
  let result: A
  try {
    result = await fn(s)
  } catch (error) {
    await s
      .close()
      .catch((closeError) => console.error("conformance: cleanup after a failure also failed", closeError))
    throw error
  }
  await s.close()
  return result
}

/** A promise with its resolve function, for gates in tests. */
export const deferred = <A = void>() => {
  let resolve!: (a: A) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<A>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

/** Handle and request kinds that outlive a bus when something leaks. */
const trackedResources = new Set([
  "Timeout",
  "Immediate",
  "TCPSocketWrap",
  "TCPServerWrap",
  "TCPWrap",
  "TLSWrap",
  "PipeWrap",
  "PipeServerWrap",
  "UDPWrap",
  "ProcessWrap",
  "FSEventWrap",
  "StatWatcher",
  "SignalWrap",
])

/** Counts of active handles/requests by kind, limited to the kinds that indicate leaks. */
export const activeResources = (): Map<string, number> => {
  const counts = new Map<string, number>()
  for (const kind of process.getActiveResourcesInfo()) {
    if (trackedResources.has(kind)) counts.set(kind, (counts.get(kind) ?? 0) + 1)
  }
  return counts
}

/**
 * A baseline of active resources without the transient ones (a scheduler's immediate, the
 * test runner's own short timers): the least count of each kind over `samples` polls
 * `intervalMs` apart (half a second by default).
 */
export const quietResources = async (samples = 25, intervalMs = 20): Promise<Map<string, number>> => {
  let least = activeResources()
  for (let i = 1; i < samples; i++) {
    await delay(intervalMs)
    const now = activeResources()
    least = new Map([...least].map(([kind, n]) => [kind, Math.min(n, now.get(kind) ?? 0)]))
  }
  return least
}

/** Kinds with more active resources now than in `before`, as `kind: before → now`. */
export const resourceGrowth = (before: Map<string, number>, now: Map<string, number>): Array<string> =>
  [...now]
    .filter(([kind, n]) => n > (before.get(kind) ?? 0))
    .map(([kind, n]) => `${kind}: ${before.get(kind) ?? 0} → ${n}`)

/**
 * Publishes one sentinel per collector (one transaction) and waits for each, so late
 * duplicates of earlier events have had their chance to show up before the assertions.
 */
export async function settle(
  s: Session,
  bus: Bus,
  collectors: ReadonlyArray<Collector>,
): Promise<Set<string>> {
  const keyOf = (a: Address) => JSON.stringify([a.tenant, a.channel])
  const addresses = new Map(collectors.map((c) => [keyOf(c.address), c.address]))
  const { ids } = await s.publish(
    bus,
    [...addresses.values()].map((a) => event(a, sentinelType, { sentinel: true })),
  )
  const byAddress = new Map([...addresses.keys()].map((k, i) => [k, ids[i]!]))
  await waitFor(
    () => collectors.every((c) => c.has(byAddress.get(keyOf(c.address))!)),
    s.ctx.deliveryTimeoutMs,
    "the trailing sentinels",
  )
  return new Set(ids)
}

/** Events of `c` without the sentinels. */
export const payload = (c: Collector, sentinels: Set<string>) => c.events.filter((e) => !sentinels.has(e.id))

export { dataField }

/** async_hooks resource types worth reporting when a bus leaks. */
const hookTypes = new Set([
  "Timeout",
  "Immediate",
  "TCPWRAP",
  "TCPCONNECTWRAP",
  "TCPSERVERWRAP",
  "TLSWRAP",
  "PIPEWRAP",
  "PIPECONNECTWRAP",
  "UDPWRAP",
  "PROCESSWRAP",
  "FSEVENTWRAP",
  "STATWATCHER",
  "SIGNALWRAP",
])

/**
 * Records where handles and timers were created while enabled, and forgets them when they
 * are destroyed: when a leak is found, `alive()` says what was left and from where.
 * Diagnostics only (the verdict uses {@link activeResources} counts, which are immune to
 * resources the target itself creates and keeps).
 */
export class ResourceTracker {
  readonly #alive = new Map<number, string>()
  readonly #hook = createHook({
    init: (id, type) => {
      if (!hookTypes.has(type)) return
      const stack = (new Error().stack ?? "").split("\n").slice(3, 11).join("\n")
      this.#alive.set(id, `${type}\n${stack}`)
    },
    destroy: (id) => {
      this.#alive.delete(id)
    },
  })
  start(): this {
    this.#hook.enable()
    return this
  }
  stop(): void {
    this.#hook.disable()
  }
  /** Resources created while enabled and not destroyed since, with their creation stacks. */
  alive(limit = 5): Array<string> {
    // The waiting loop's own timer is not the bus's.
    return [...this.#alive.values()].filter((s) => !s.includes("waitFor")).slice(0, limit)
  }
}
