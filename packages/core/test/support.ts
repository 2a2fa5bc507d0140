import { Effect, Fiber, Layer, References, Stream } from "effect"
import {
  type Envelope,
  makeEnvelope,
  memoryBroker,
  memoryTransport,
  type Outbox,
  type OutboxServices,
  outboxLayer,
  type RelayClaim,
  type RelayLog,
  sendEach,
  Transport,
  type TransportName,
} from "../src/adapter.js"
import type { BusError, EventInput, MemoryOutbox } from "../src/index.js"

/** Silences the bus's own logs (relay warnings, the selection line) in tests. */
export const quiet = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(self, References.MinimumLogLevel, "None")

/** Runs an effect with no requirements, quietly. */
export const run = <A, E>(self: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(quiet(self))

/** Runs an effect that is expected to fail and returns its error. */
export const runFail = <A, E>(self: Effect.Effect<A, E>): Promise<E> =>
  Effect.runPromise(quiet(Effect.flip(self)))

/** A valid envelope built synchronously (names, JSON and size are checked). */
export const envelope = (input: EventInput): Envelope => Effect.runSync(makeEnvelope(input))

/** Events `0..n-1` on one address, with `data: { i }`. */
export const events = (tenant: string, channel: string, n: number, offset = 0): Array<Envelope> =>
  Array.from({ length: n }, (_, k) =>
    envelope({ tenant, channel, type: "test.event", data: { i: offset + k } }),
  )

/** A short random name, so tests never share an address by accident. */
export const randomName = (prefix: string): string => `${prefix}-${Math.random().toString(36).slice(2, 10)}`

/** Polls `condition` every 5 ms until it holds; fails after `timeoutMs`. */
export const waitFor = (
  condition: () => boolean,
  timeoutMs = 5_000,
  what = "condition",
): Effect.Effect<void> =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!condition()) {
      if (Date.now() > deadline)
        return yield* Effect.die(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      yield* Effect.sleep(5)
    }
  })

/** Same as {@link waitFor}, with an effectful condition. */
export const waitForEffect = <E, R>(
  condition: Effect.Effect<boolean, E, R>,
  timeoutMs = 5_000,
  what = "condition",
): Effect.Effect<void, E, R> =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!(yield* condition)) {
      if (Date.now() > deadline)
        return yield* Effect.die(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      yield* Effect.sleep(5)
    }
  })

/**
 * Runs `stream` in a child fiber, pushing each element into the returned array; the
 * fiber is interrupted when the enclosing test effect ends (child fibers die with their parent).
 */
export const collectInto = <A, E, R>(stream: Stream.Stream<A, E, R>) =>
  Effect.gen(function* () {
    const items: Array<A> = []
    const fiber = yield* stream.pipe(
      Stream.runForEach((a) => Effect.sync(() => items.push(a))),
      Effect.forkChild,
    )
    return { items, fiber, stop: Fiber.interrupt(fiber) }
  })

/** Per-id counters of what a wrapped broker was asked to send. */
export interface SendLog {
  /** Send attempts per event id, including failed ones. */
  readonly attempts: Map<string, number>
  /** Total send calls. */
  total: number
}

/**
 * memoryBroker() with a hook in front of `send`: `before(event)` may return an error to
 * fail that send, or an effect to run first (latency, a stall). Every call is counted.
 */
export const instrumentedBroker = (
  brokerOutbox: MemoryOutbox,
  before: (event: Envelope, attempt: number) => BusError | Effect.Effect<void> | undefined = () => undefined,
): { readonly layer: Layer.Layer<Transport>; readonly log: SendLog } => {
  const log: SendLog = { attempts: new Map(), total: 0 }
  const layer = Layer.effect(
    Transport,
    Effect.gen(function* () {
      const inner = yield* Transport
      const send = (event: Envelope) =>
        Effect.suspend(() => {
          const attempt = (log.attempts.get(event.id) ?? 0) + 1
          log.attempts.set(event.id, attempt)
          log.total++
          const hook = before(event, attempt)
          if (hook === undefined) return inner.send(event)
          if (Effect.isEffect(hook)) return Effect.andThen(hook, inner.send(event))
          return Effect.fail(hook)
        })
      return Transport.of({ ...inner, send, sendAll: sendEach(send) })
    }),
  ).pipe(Layer.provide(memoryBroker(brokerOutbox).layer))
  return { layer, log }
}

/** Counters of what a wrapped outbox store was asked to do. */
export interface StoreLog {
  /** Relay reads (partition or address pages). */
  relayReads: number
  readCalls: number
  /** Positions stored per relay owner. */
  readonly commitsBy: Map<string, number>
  /** Partitions claimed per relay owner. */
  readonly claimsBy: Map<string, Set<number>>
  /** Owners that are "killed": their stores, renewals and releases never reach the store. */
  readonly dead: Set<string>
}

/**
 * The outbox store of `outbox` with counters around the relay's side and `read`;
 * `failRelay` makes every relay read fail (a store that is down); `changesDelayMs`
 * delivers each change signal late, as a NOTIFY that is still in flight. Owners added to
 * `log.dead` behave as a killed process: nothing they store or release arrives.
 */
export const instrumentedStore = (
  outbox: MemoryOutbox,
  options: { readonly failRelay?: () => BusError | undefined; readonly changesDelayMs?: number } = {},
): { readonly layer: Layer.Layer<OutboxServices>; readonly log: StoreLog } => {
  const log: StoreLog = {
    relayReads: 0,
    readCalls: 0,
    commitsBy: new Map(),
    claimsBy: new Map(),
    dead: new Set(),
  }
  const inner = outbox.store
  const alive = <A>(owner: string, effect: Effect.Effect<A, BusError>, dead: A) =>
    Effect.suspend(() => (log.dead.has(owner) ? Effect.succeed(dead) : effect))
  const relay: RelayLog = {
    ...inner.relay,
    claim: (partition, owner, leaseMs) =>
      Effect.suspend(() =>
        log.dead.has(owner) ? Effect.succeed(undefined) : inner.relay.claim(partition, owner, leaseMs),
      ).pipe(
        Effect.map((claim) => {
          if (claim === undefined) return undefined
          const set = log.claimsBy.get(owner) ?? new Set()
          set.add(partition)
          log.claimsBy.set(owner, set)
          return {
            ...claim,
            commit: (state) =>
              alive(
                owner,
                claim
                  .commit(state)
                  .pipe(
                    Effect.tap(() =>
                      Effect.sync(() => log.commitsBy.set(owner, (log.commitsBy.get(owner) ?? 0) + 1)),
                    ),
                  ),
                true,
              ),
            renew: alive(owner, claim.renew, true),
          } satisfies RelayClaim
        }),
      ),
    release: (partition, owner) => alive(owner, inner.relay.release(partition, owner), undefined),
    heartbeat: (owner, leaseMs) => alive(owner, inner.relay.heartbeat(owner, leaseMs), 1),
    read: (partition, after, limit, address) =>
      Effect.suspend(() => {
        log.relayReads++
        const error = options.failRelay?.()
        if (error !== undefined) return Effect.fail(error)
        return inner.relay.read(partition, after, limit, address)
      }),
  }
  const layer = outboxLayer({
    ...inner,
    relay,
    changes:
      options.changesDelayMs === undefined
        ? inner.changes
        : inner.changes.pipe(Stream.tap(() => Effect.sleep(options.changesDelayMs!))),
    read: (address, after, limit) =>
      Effect.suspend(() => {
        log.readCalls++
        return inner.read(address, after, limit)
      }),
  })
  return { layer, log }
}

/** `data.i` of delivered events, for compact order assertions. */
export const indices = (list: ReadonlyArray<{ readonly data: unknown }>): Array<number> =>
  list.map((e) => (e.data as { i: number }).i)

/** An outbox for `createBus` from a hand-built store layer (wrapped or instrumented), read by the memory transport. */
export const asOutbox = (
  store: { readonly layer: Layer.Layer<OutboxServices> },
  transport: TransportName = "memory",
): Outbox => ({ transport, layers: () => ({ outbox: store.layer, transport: memoryTransport() }) })

/** Settles with the promise, or rejects after `ms` (the bound every wait in a test has). */
export const within = <A>(promise: Promise<A>, ms: number, what: string): Promise<A> =>
  new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
    promise.then(
      (a) => {
        clearTimeout(timer)
        resolve(a)
      },
      (e: unknown) => {
        clearTimeout(timer)
        reject(e)
      },
    )
  })
