import {
  Cause,
  type Context,
  Effect,
  Exit,
  Fiber,
  type ManagedRuntime,
  Metric,
  ManagedRuntime as Runtime,
  Scope,
  Stream,
} from "effect"
import { type BusOptions, busLayer, TransportSelection } from "../bus/busLayer.js"
import type { TransportChoice } from "../config/BusConfig.js"
import type { TransportCapabilities } from "../contracts/Capabilities.js"
import type { StartPosition } from "../contracts/Cursor.js"
import { type DeadLetter, OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import type { DeliveredEvent, EventInput } from "../envelope/Envelope.js"
import { BusClosed, type BusError } from "../errors/BusError.js"
import { deliveryLag, eventsDelivered } from "../metrics/metrics.js"
import { checkAddress } from "../names/Name.js"
import { ageOf } from "../observability/telemetry.js"
import { outboxFeedCursor } from "../outbox-transport/OutboxTransport.js"
import { Publisher, type PublishReceipt } from "../publisher/Publisher.js"
import { cappedBackoff } from "../schedule/backoff.js"
import { type ConsumeRequest, Subscriber } from "../subscriber/Subscriber.js"
import { EventQueue } from "./EventQueue.js"

/**
 * The Promise / AsyncIterable face of the bus, for applications that do not use Effect.
 * Every method runs the Effect API underneath; errors are the same typed `BusError`
 * instances, thrown.
 *
 * @module
 */

/** A live subscription: iterate it with `for await`, stop it with `close()` or `break`. */
export interface Subscription extends AsyncIterable<DeliveredEvent>, AsyncDisposable {
  /**
   * Resolves with the cursor the subscription starts after, once that position is fixed
   * (for `from: "now"`, the head at subscribe time; on the outbox transports, the
   * position of the address's shared feed after a read that began at subscribe time;
   * while the store is unreachable it waits, retrying). Events published after `ready` resolves are delivered; rejects if
   * the subscription cannot start, e.g. with `CursorInvalid` when the transport refuses
   * the start cursor (the outbox transports check it before `ready` resolves; broker
   * transports report a refused cursor from the iterator).
   */
  readonly ready: Promise<string>
  /** Cursor of the last event this iterator yielded (`undefined` before the first). */
  readonly cursor: string | undefined
  /**
   * Events received and not yet taken by the iterator. Bounded: when the loop does not
   * pull, delivery to this subscription pauses (nothing more is held for it) and later
   * resumes from its cursor, without gap or repeat.
   */
  readonly buffered: number
  /** Stops delivery and releases everything the subscription holds. */
  close(): Promise<void>
}

/** A running consumer-group member. */
export interface Consumer extends AsyncDisposable {
  /** Settles when the consumer stops: resolves after `close()`, rejects on a fatal error. */
  readonly done: Promise<void>
  /**
   * Stops. A handler in flight may finish and have its event acknowledged for up to
   * `stopGraceMs` (default 1 s); after that it is interrupted, and its event is delivered
   * again later.
   */
  close(): Promise<void>
}

/** Subscription request of the facade. */
export interface SubscribeOptions {
  readonly tenant: string
  readonly channel: string
  /** A cursor, `"beginning"` or `"now"` (default). */
  readonly from?: StartPosition
}

/**
 * Events a subscription's iterator may hold before delivery to it pauses (plus at most
 * one page arriving). Small: a consumer that is behind resumes from its cursor instead.
 */
export const iteratorBuffer = 256

/** The bus. */
export interface Bus extends AsyncDisposable {
  /** Transport in use and why it was chosen. */
  readonly selection: TransportChoice
  /** What the transport in use can do. */
  readonly capabilities: TransportCapabilities
  /** Appends events inside the caller's transaction `tx`; delivered when it commits. */
  publish(tx: unknown, events: EventInput | ReadonlyArray<EventInput>): Promise<PublishReceipt>
  /** Events of one tenant channel after `from`, then live. */
  subscribe(options: SubscribeOptions): Subscription
  /** The cursor `from: "now"` would start after on this address: everything delivered so far. */
  head(address: { readonly tenant: string; readonly channel: string }): Promise<string>
  /** Runs `handler` for every event of a consumer group; a throw or rejection retries with backoff. */
  consume(
    request: ConsumeRequest,
    handler: (event: DeliveredEvent, attempt: number) => Promise<void> | void,
  ): Consumer
  /** Dead-lettered events, newest first. */
  deadLetters(limit?: number): Promise<ReadonlyArray<DeadLetter>>
  /** The Effect runtime behind the facade, for mixing in Effect code. */
  readonly runtime: ManagedRuntime.ManagedRuntime<
    Publisher | Subscriber | Transport | OutboxStore | TransportSelection,
    unknown
  >
  /** Stops every subscription, consumer, relay and connection of this bus. */
  close(): Promise<void>
}

// Starting a subscription retries transient failures with the bus's usual capped backoff.
const startRetry = {
  schedule: cappedBackoff("50 millis", "5 seconds"),
  while: (e: BusError) => e.retryable,
}

/**
 * Creates a bus: selects the transport (config, then `BUS_*` environment overrides),
 * connects, and logs the choice once.
 *
 * @example
 * ```ts
 * import { createBus, memoryOutbox } from "@bus/core"
 *
 * const outbox = memoryOutbox()
 * const bus = await createBus({ outbox })
 * await outbox.transaction((tx) => bus.publish(tx, { tenant: "acme", channel: "orders", type: "order.paid", data: { id: 1 } }))
 * for await (const event of bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" })) console.log(event)
 * ```
 */
export const createBus = async (options: BusOptions): Promise<Bus> => {
  const runtime = Runtime.make(busLayer(options))
  let selection: TransportChoice
  let capabilities: TransportCapabilities
  let transportService: Transport["Service"]
  try {
    ;[selection, transportService] = await runtime.runPromise(
      Effect.all([TransportSelection.use((s) => Effect.succeed(s)), Transport.use((t) => Effect.succeed(t))]),
    )
    capabilities = transportService.capabilities
  } catch (error) {
    await runtime.dispose()
    throw error
  }
  const handles = new Set<{ close(): Promise<void> }>()
  let closed = false
  const ensureOpen = () => {
    if (closed) throw new BusClosed({ message: "the bus is closed" })
  }

  // Outbox transports (postgres-notify, memory) let the iterator pull pages from the
  // address's shared log itself: no fiber, stream or queue per subscription, and nothing
  // held beyond the page being iterated (back-pressure is the pull itself).
  const openCursor = outboxFeedCursor(transportService)
  const metricContext =
    openCursor !== undefined ? await runtime.runPromise(Effect.context<never>()) : undefined
  const delivered = Metric.withAttributes(eventsDelivered, { transport: capabilities.name })
  const lag = Metric.withAttributes(deliveryLag, { transport: capabilities.name })
  /** Pages whose delivery lag was recorded (weak: a page lives as long as the log or a reader holds it). */
  const lagRecorded = new WeakSet<ReadonlyArray<DeliveredEvent>>()

  const subscribeByCursor = (
    request: SubscribeOptions,
    open: NonNullable<typeof openCursor>,
    context: Context.Context<never>,
  ): Subscription => {
    const scope = Scope.makeUnsafe()
    let closed = false
    let failure: { readonly error: unknown } | undefined
    let step: Fiber.Fiber<unknown, unknown> | undefined
    let cancelWait: (() => void) | undefined
    let wake: (() => void) | undefined
    let cursor: string | undefined
    let page: ReadonlyArray<DeliveredEvent> = []
    let at = 0
    const opened = runtime.runPromise(
      Effect.gen(function* () {
        const address = yield* checkAddress(request)
        const transport = yield* Transport
        const from = request.from ?? "now"
        // A refused start cursor rejects `ready` (and ends the iterator with the same error);
        // the transport skips the check for a position its feed handed out.
        if (from !== "now" && transport.checkStart) yield* transport.checkStart(address, from)
        // "now" is fixed here, before any event is read, so `ready` marks a definite
        // position: the address's feed reads once after this call and the subscriber starts
        // at the feed's position there (subscribers starting together share that read). A
        // transient failure (the store unreachable) is retried inside the feed: the
        // subscription waits for the store rather than dying; closing it ends the wait.
        const feedCursor = yield* Scope.provide(open(address, from, true), scope)
        return { start: feedCursor.start, feedCursor }
      }),
    )
    const ready = opened.then((o) => o.start)
    // Only for callers who await it; an unobserved start failure also ends the iterator.
    ready.catch(() => {})
    const runStep = (effect: Effect.Effect<unknown, BusError>) =>
      new Promise<unknown>((resolve, reject) => {
        const fiber = runtime.runFork(effect)
        step = fiber
        fiber.addObserver((exit) => {
          step = undefined
          if (Exit.isSuccess(exit)) resolve(exit.value)
          else if (Exit.hasInterrupts(exit)) resolve(undefined)
          else reject(Cause.squash(exit.cause))
        })
      })
    const done: IteratorResult<DeliveredEvent> = { done: true, value: undefined }
    /** Fills `page` with the next page; false once closed. */
    const fill = async (): Promise<boolean> => {
      const { feedCursor } = await opened
      for (;;) {
        if (closed) return false
        const found = feedCursor.poll()
        if (found === "wait") {
          await new Promise<void>((resolve) => {
            wake = resolve
            cancelWait = feedCursor.onAppend(resolve)
          })
          cancelWait = undefined
          wake = undefined
          continue
        }
        const next = found === "step" ? ((await runStep(feedCursor.step)) as typeof found | undefined) : found
        if (next === undefined || typeof next === "string") continue
        page = next.events
        at = 0
        delivered.updateUnsafe(page.length, context)
        // A page of the shared log is the same array for every local subscriber: its lag is
        // recorded once per process (by whoever takes it first), not once per subscriber.
        if (!lagRecorded.has(page)) {
          lagRecorded.add(page)
          const now = Date.now()
          for (const event of page) lag.updateUnsafe(ageOf(event, now), context)
        }
        return true
      }
    }
    const close = async () => {
      if (closed) return
      closed = true
      handles.delete(subscription)
      page = []
      cancelWait?.()
      wake?.()
      if (step !== undefined) await Effect.runPromise(Fiber.interrupt(step))
      await runtime.runPromise(Scope.close(scope, Exit.void)).catch(() => {})
    }
    const subscription: Subscription = {
      ready,
      get cursor() {
        return cursor
      },
      get buffered() {
        return page.length - at
      },
      close,
      [Symbol.asyncDispose]: close,
      [Symbol.asyncIterator]: () => ({
        next: async () => {
          if (failure !== undefined) throw failure.error
          if (closed) return done
          if (at >= page.length) {
            let more: boolean
            try {
              more = await fill()
            } catch (error) {
              // A subscription that cannot go on (an invalid cursor, a feed failed for good)
              // ends with its error, for this and every later call; it releases its feed.
              failure = { error }
              await close()
              throw error
            }
            if (!more) return done
          }
          const event = page[at++] as DeliveredEvent
          cursor = event.cursor
          return { done: false, value: event }
        },
        return: async () => {
          await close()
          return done
        },
      }),
    }
    handles.add(subscription)
    return subscription
  }

  const subscribe = (request: SubscribeOptions): Subscription => {
    ensureOpen()
    if (openCursor !== undefined && metricContext !== undefined)
      return subscribeByCursor(request, openCursor, metricContext)
    const queue = new EventQueue<DeliveredEvent>(iteratorBuffer)
    let markReady: (cursor: string) => void = () => {}
    let failReady: (error: unknown) => void = () => {}
    const ready = new Promise<string>((resolve, reject) => {
      markReady = resolve
      failReady = reject
    })
    // Only for callers who await it; an unobserved start failure also ends the iterator.
    ready.catch(() => {})
    const fiber = runtime.runFork(
      Effect.gen(function* () {
        const transport = yield* Transport
        const subscriber = yield* Subscriber
        const from = request.from ?? "now"
        // "now" is fixed here, before any event is read, so `ready` marks a definite position.
        // A transient failure (the store unreachable) is retried: the subscription waits
        // for the store rather than dying; closing it ends the wait.
        const start = from === "now" ? yield* transport.head(request).pipe(Effect.retry(startRetry)) : from
        // A refused start cursor rejects `ready` (and ends the iterator with the same error).
        if (from !== "now" && transport.checkStart) yield* transport.checkStart(request, from)
        markReady(start)
        yield* subscriber
          .subscribe({ ...request, from: start })
          .pipe(Stream.runForEachArray((events) => queue.offer(events)))
      }),
    )
    fiber.addObserver((exit) => {
      if (Exit.isSuccess(exit) || Exit.hasInterrupts(exit)) {
        failReady(new BusClosed({ message: "the subscription closed before it started" }))
        queue.end()
      } else {
        const error = Cause.squash(exit.cause)
        failReady(error)
        queue.fail(error)
      }
    })
    let cursor: string | undefined
    const close = async () => {
      handles.delete(subscription)
      await Effect.runPromise(Fiber.interrupt(fiber))
      queue.end()
    }
    const subscription: Subscription = {
      ready,
      get cursor() {
        return cursor
      },
      get buffered() {
        return queue.size
      },
      close,
      [Symbol.asyncDispose]: close,
      [Symbol.asyncIterator]: () => {
        const it = queue.iterator()
        return {
          next: async () => {
            const r = await it.next()
            if (!r.done) cursor = r.value.cursor
            return r
          },
          return: async () => {
            await close()
            return { done: true, value: undefined }
          },
        }
      },
    }
    handles.add(subscription)
    return subscription
  }

  const consume: Bus["consume"] = (request, handler) => {
    ensureOpen()
    const fiber = runtime.runFork(
      Subscriber.use((s) =>
        s.consume(request, (event, attempt) => Effect.tryPromise(async () => handler(event, attempt))),
      ),
    )
    const done = new Promise<void>((resolve, reject) => {
      fiber.addObserver((exit) => {
        if (Exit.isSuccess(exit) || Exit.hasInterrupts(exit)) resolve()
        else reject(Cause.squash(exit.cause))
      })
    })
    // `done` is for callers who wait on it; an unobserved failure must not crash the process.
    done.catch(() => {})
    const close = async () => {
      handles.delete(consumer)
      await Effect.runPromise(Fiber.interrupt(fiber))
    }
    const consumer: Consumer = { done, close, [Symbol.asyncDispose]: close }
    handles.add(consumer)
    return consumer
  }

  const close = async () => {
    if (closed) return
    closed = true
    await Promise.all([...handles].map((o) => o.close()))
    await runtime.dispose()
  }

  return {
    selection,
    capabilities,
    publish: (tx, events) => {
      ensureOpen()
      return runtime.runPromise(Publisher.use((p) => p.publish(tx, events)))
    },
    subscribe,
    head: (address) => {
      ensureOpen()
      return runtime.runPromise(Transport.use((t) => t.head(address)))
    },
    consume,
    deadLetters: (limit = 100) =>
      runtime.runPromise(
        Effect.gen(function* () {
          const store = yield* OutboxStore
          const transport = yield* Transport
          const fromOutbox = yield* store.deadLetters(limit)
          // Outbox transports keep consumer dead letters in the outbox too; brokers keep their own.
          if (!transport.capabilities.needsRelay) return fromOutbox
          const fromTransport = yield* transport.deadLetters(limit)
          return [...fromOutbox, ...fromTransport].sort((a, b) => b.at.localeCompare(a.at)).slice(0, limit)
        }),
      ),
    runtime,
    close,
    [Symbol.asyncDispose]: close,
  }
}
