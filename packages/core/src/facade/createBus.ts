import {
  Cause,
  type Context,
  Effect,
  Exit,
  Fiber,
  type ManagedRuntime,
  Option,
  ManagedRuntime as Runtime,
  Scope,
  Stream,
} from "effect"
import { cappedBackoff } from "../bus/backoff.js"
import { type BusOptions, busLayer, TransportSelection } from "../bus/busLayer.js"
import { Publisher, type PublishInput, type PublishReceipt } from "../bus/publisher.js"
import { type ConsumeRequest, Subscriber } from "../bus/subscriber.js"
import type { TransportCapabilities } from "../contracts/capabilities.js"
import type { StartPosition } from "../contracts/cursor.js"
import { type DeadLetter, DeadLetterStore, type OutboxCore } from "../contracts/outboxStore.js"
import { Transport } from "../contracts/transport.js"
import {
  type AnyChannel,
  type ChannelEvent,
  type ChannelRef,
  channelName,
  checkPage,
  invalidEventWarning,
  isChannel,
  type OnInvalidEvent,
} from "../model/channel.js"
import type { TransportChoice } from "../model/config.js"
import type { DeliveredEvent } from "../model/envelope.js"
import { BusClosed, type BusError } from "../model/errors.js"
import { checkAddress } from "../model/name.js"
import { deliveryLag, eventsDelivered, withMetricAttributes } from "../observability/metrics.js"
import { ageOf } from "../observability/telemetry.js"
import { type FeedCursor, feedCursorOf } from "../outboxTransport/feed.js"
import { EventQueue } from "./eventQueue.js"

/**
 * The Promise / AsyncIterable face of the bus, for applications that do not use Effect.
 * Every method runs the Effect API underneath; errors are the same typed `BusError`
 * instances, thrown.
 *
 * @module
 */

/**
 * A live subscription: iterate it with `for await`, stop it with `close()`, `break`, its
 * `signal` or `await using`. `Event` is a typed channel's event union ({@link ChannelEvent}).
 */
export interface Subscription<Event = DeliveredEvent> extends AsyncIterable<Event>, AsyncDisposable {
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

/** A running consumer-group member; `await using` closes it at the end of the block. */
export interface Consumer extends AsyncDisposable {
  /** Settles when the consumer stops: resolves after `close()`, rejects on a fatal error. */
  readonly done: Promise<void>
  /**
   * Stops. A handler in flight may finish and have its event acknowledged for up to
   * `stopGraceMs` (default 1 s); after that its `signal` aborts, the bus stops waiting for
   * it, and its event is delivered again later (to this group's next member).
   */
  close(): Promise<void>
}

/**
 * Subscription request of the facade. `channel` is a name, or a typed channel from
 * `defineChannel`: then the events are typed by its schemas and checked on receipt.
 */
export interface SubscribeOptions<C extends ChannelRef = string> {
  readonly tenant: string
  readonly channel: C
  /** A cursor, `"beginning"` or `"now"` (default). */
  readonly from?: StartPosition
  /**
   * Closes the subscription when aborted: a `for await` over it ends (no error), `ready`
   * rejects with `BusClosed` if it had not resolved. Already aborted: the subscription
   * starts closed and reads nothing.
   */
  readonly signal?: AbortSignal
  /**
   * Typed channels: told about each received event that fails its schema. Such an event is
   * not yielded (a subscription is a live view; consumer groups dead-letter instead) and
   * the subscription goes on past it. Default: a warning with the event's id, cursor and
   * the schema's issues is logged. A throw here ends the iterator with that error.
   */
  readonly onInvalid?: OnInvalidEvent
}

/** Consumer-group request of the facade: {@link ConsumeRequest} and a `signal`. */
export interface ConsumeOptions<C extends ChannelRef = string> extends ConsumeRequest<C> {
  /**
   * Stops the consumer when aborted, as `close()` does (`done` resolves). Already aborted:
   * the consumer does not start and `done` is resolved.
   */
  readonly signal?: AbortSignal
}

/**
 * A consumer's handler. Throwing or rejecting asks for a retry (with backoff, then the dead
 * letters). `attempt` counts deliveries of this event to the group, from 1. `signal` aborts
 * when the handler's time is up: its member stopped (`close()`, the consumer's `signal`,
 * `bus.close()`) and the `stopGraceMs` grace period passed without the handler settling.
 * From then on the bus no longer waits for it, its outcome is ignored and the event will be
 * delivered again: pass `signal` to `fetch` and the like so the work stops too.
 */
export type ConsumeHandler<Event = DeliveredEvent> = (
  event: Event,
  attempt: number,
  signal: AbortSignal,
) => Promise<void> | void

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
  /**
   * Appends events inside the caller's transaction `tx`; delivered when it commits. An
   * event of a typed channel (`channel: orders`) is checked against the schema of its
   * `type` first; a mismatch rejects with `InvalidEvent` (reason `schema`) before anything
   * is written, leaving `tx` untouched and usable.
   */
  publish<C extends AnyChannel = never>(
    tx: unknown,
    events: PublishInput<C> | ReadonlyArray<PublishInput<C>>,
  ): Promise<PublishReceipt>
  /** Events of one tenant channel after `from`, then live (typed for a typed channel). */
  subscribe<C extends ChannelRef = string>(options: SubscribeOptions<C>): Subscription<ChannelEvent<C>>
  /** The cursor `from: "now"` would start after on this address: everything delivered so far. */
  head(address: { readonly tenant: string; readonly channel: string }): Promise<string>
  /**
   * Runs `handler` for every event of a consumer group; a throw or rejection retries with
   * backoff. With a typed channel the handler gets typed events, and an event that fails its
   * schema is dead-lettered (never handed to the handler, never dropped).
   */
  consume<C extends ChannelRef = string>(
    request: ConsumeOptions<C>,
    handler: ConsumeHandler<ChannelEvent<C>>,
  ): Consumer
  /** Dead-lettered events, newest first. */
  deadLetters(limit?: number): Promise<ReadonlyArray<DeadLetter>>
  /** The Effect runtime behind the facade, for mixing in Effect code. */
  readonly runtime: ManagedRuntime.ManagedRuntime<
    Publisher | Subscriber | Transport | OutboxCore | TransportSelection,
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

  // Transports with a shared feed log (postgres-notify, memory, NATS) let the iterator pull
  // pages from the address's log itself: no fiber, stream or queue per subscription, and
  // nothing held beyond the page being iterated (back-pressure is the pull itself).
  const openCursor = feedCursorOf(transportService)
  const metricContext =
    openCursor !== undefined ? await runtime.runPromise(Effect.context<never>()) : undefined
  // The delivery metrics' attributes are bound to the context once, not per update.
  const deliveryContext =
    metricContext !== undefined
      ? withMetricAttributes(metricContext, { transport: capabilities.name })
      : undefined
  /** Pages whose delivery lag was recorded (weak: a page lives as long as the log or a reader holds it). */
  const lagRecorded = new WeakSet<ReadonlyArray<DeliveredEvent>>()

  /** Where a typed subscription reports an event that fails its schema. */
  const onInvalidOf = (request: SubscribeOptions<ChannelRef>): OnInvalidEvent =>
    request.onInvalid ??
    ((event, error) => runtime.runFork(Effect.logWarning(invalidEventWarning(event, error))))

  /**
   * Ties a subscription's or consumer's `close` to the caller's signal. The listener is
   * removed when the handle closes, so a long-lived signal does not keep closed handles alive.
   */
  const bindSignal = (signal: AbortSignal | undefined, close: () => Promise<void>) => {
    if (signal === undefined) return () => {}
    const onAbort = () => void close().catch(() => {})
    signal.addEventListener("abort", onAbort, { once: true })
    return () => signal.removeEventListener("abort", onAbort)
  }

  /** A subscription whose signal was aborted before it started: ends at once, holds nothing. */
  const abortedSubscription = (): Subscription => {
    const ready = Promise.reject(new BusClosed({ message: "the subscription was aborted before it started" }))
    ready.catch(() => {})
    const close = async () => {}
    const done: IteratorResult<DeliveredEvent> = { done: true, value: undefined }
    return {
      ready,
      cursor: undefined,
      buffered: 0,
      close,
      [Symbol.asyncDispose]: close,
      [Symbol.asyncIterator]: () => ({ next: async () => done, return: async () => done }),
    }
  }

  const subscribeByCursor = (
    request: SubscribeOptions<ChannelRef>,
    open: NonNullable<typeof openCursor>,
    context: Context.Context<never>,
  ): Subscription => {
    const typed = isChannel(request.channel) ? request.channel : undefined
    const onInvalid = onInvalidOf(request)
    const scope = Scope.makeUnsafe()
    let closed = false
    let failure: { readonly error: unknown } | undefined
    let step: Fiber.Fiber<unknown, unknown> | undefined
    let cancelWait: (() => void) | undefined
    let wake: (() => void) | undefined
    let cursor: string | undefined
    let page: ReadonlyArray<DeliveredEvent> = []
    let at = 0
    const opening = runtime.runFork(
      Effect.gen(function* () {
        const address = yield* checkAddress({ tenant: request.tenant, channel: channelName(request.channel) })
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
    // A subscription closed while it starts (`close()`, its signal) interrupts the start:
    // `ready` then rejects with BusClosed rather than waiting for ever.
    const opened = new Promise<{ readonly start: string; readonly feedCursor: FeedCursor }>(
      (resolve, reject) =>
        opening.addObserver((exit) => {
          if (Exit.isSuccess(exit)) resolve(exit.value)
          else if (Exit.hasInterrupts(exit))
            reject(new BusClosed({ message: "the subscription closed before it started" }))
          else reject(Cause.squash(exit.cause))
        }),
    )
    /** The cursor once open: the iterator's fast path polls it without awaiting `opened`. */
    let feedCursor: FeedCursor | undefined
    const ready = opened.then((o) => {
      feedCursor = o.feedCursor
      return o.start
    })
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
    /** Counts a page taken and, once per process, its delivery lag. */
    const record = (events: ReadonlyArray<DeliveredEvent>) => {
      eventsDelivered.updateUnsafe(events.length, context)
      // A page of the shared log is the same array for every local subscriber: its lag is
      // recorded once per process (by whoever takes it first), not once per subscriber.
      if (!lagRecorded.has(events)) {
        lagRecorded.add(events)
        const now = Date.now()
        for (const event of events) deliveryLag.updateUnsafe(ageOf(event, now), context)
      }
    }
    /** Hands over the next event of `page` (there is one). */
    const take = (): IteratorResult<DeliveredEvent> => {
      const event = page[at++] as DeliveredEvent
      cursor = event.cursor
      return { done: false, value: event }
    }
    /**
     * The fast path of an untyped subscription in the shared log: the next event when the
     * log has a page for it, `"wait"` when it has none yet, `"slow"` when the cursor needs a
     * step (a join, a catch-up read, a failure), which `fill` runs.
     */
    const pollNow = (fc: FeedCursor): IteratorResult<DeliveredEvent> | "wait" | "slow" => {
      for (;;) {
        const found = fc.poll()
        if (found === "wait") return "wait"
        if (found === "step") return "slow"
        const events = found.events
        record(events)
        if (events.length === 0) continue
        page = events
        at = 0
        return take()
      }
    }
    /** The `next()` that did not settle at once (parked or slow): a call made meanwhile waits for it. */
    let inflight: Promise<IteratorResult<DeliveredEvent>> | undefined
    /** A `next()` parked until the log appends (the fast path's only wait). */
    let parked:
      | {
          readonly resolve: (
            r: IteratorResult<DeliveredEvent> | Promise<IteratorResult<DeliveredEvent>>,
          ) => void
        }
      | undefined
    /**
     * The log appended: the parked `next()` takes the new page at once, in the log's own
     * wake-up pass (no promise or fiber between the append and the hand-off).
     */
    const onWake = () => {
      cancelWait = undefined
      const waiter = parked
      if (waiter === undefined) return
      if (closed || feedCursor === undefined) return unpark(done)
      let r: ReturnType<typeof pollNow>
      try {
        r = pollNow(feedCursor)
      } catch {
        // This runs inside the log's wake-up pass: a throw must not reach the log (and the
        // other subscribers it wakes). `fill` polls again and ends this subscription with it.
        r = "slow"
      }
      if (r === "wait") cancelWait = feedCursor.onAppend(onWake)
      else if (r === "slow") {
        parked = undefined
        waiter.resolve(runSlow())
      } else unpark(r)
    }
    /** Settles the parked `next()` with `r`. */
    const unpark = (r: IteratorResult<DeliveredEvent>) => {
      const waiter = parked
      parked = undefined
      inflight = undefined
      waiter?.resolve(r)
    }
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
        const events = next.events
        record(events)
        // A typed channel's events are checked here, as the page is taken (an async schema
        // is awaited); those that fail go to `onInvalid` and are not yielded.
        const kept = typed === undefined ? events : await checkPage(typed, events, onInvalid)
        if (closed) return false
        if (kept.length === 0) continue
        page = kept
        at = 0
        return true
      }
    }
    const close = async () => {
      if (closed) return
      closed = true
      unbind()
      handles.delete(subscription)
      page = []
      at = 0
      cancelWait?.()
      wake?.()
      unpark(done)
      await Effect.runPromise(Fiber.interrupt(opening))
      if (step !== undefined) await Effect.runPromise(Fiber.interrupt(step))
      await runtime.runPromise(Scope.close(scope, Exit.void)).catch(() => {})
    }
    /** `next()` through `fill`: the start, a step of the cursor, a typed channel's check. */
    const slowNext = async (): Promise<IteratorResult<DeliveredEvent>> => {
      if (failure !== undefined) throw failure.error
      if (closed) return done
      if (at >= page.length) {
        let more: boolean
        try {
          more = await fill()
        } catch (error) {
          // Closed by its owner while starting: a clean end, not an error.
          if (closed) return done
          // A subscription that cannot go on (an invalid cursor, a feed failed for good)
          // ends with its error, for this and every later call; it releases its feed.
          failure = { error }
          await close()
          throw error
        }
        if (!more) return done
      }
      return take()
    }
    const settled = () => {
      inflight = undefined
    }
    const runSlow = (): Promise<IteratorResult<DeliveredEvent>> => {
      const p = slowNext()
      inflight = p
      p.then(settled, settled)
      return p
    }
    // A delivery on the shared log costs an index check and a resolved promise: no async
    // function, no fiber; only the start, a cursor step and typed channels go through `fill`.
    const next = (): Promise<IteratorResult<DeliveredEvent>> => {
      if (inflight !== undefined) return inflight.then(next, next)
      if (failure !== undefined) return Promise.reject(failure.error)
      if (closed) return Promise.resolve(done)
      if (at < page.length) return Promise.resolve(take())
      const fc = feedCursor
      if (fc === undefined || typed !== undefined) return runSlow()
      const r = pollNow(fc)
      if (r === "slow") return runSlow()
      if (r !== "wait") return Promise.resolve(r)
      inflight = new Promise((resolve) => {
        parked = { resolve }
        cancelWait = fc.onAppend(onWake)
      })
      return inflight
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
        next,
        return: async () => {
          await close()
          return done
        },
      }),
    }
    const unbind = bindSignal(request.signal, close)
    handles.add(subscription)
    return subscription
  }

  const subscribe = (request: SubscribeOptions<ChannelRef>): Subscription => {
    ensureOpen()
    if (request.signal?.aborted === true) return abortedSubscription()
    if (openCursor !== undefined && deliveryContext !== undefined)
      return subscribeByCursor(request, openCursor, deliveryContext)
    const address = { tenant: request.tenant, channel: channelName(request.channel) }
    const queue = new EventQueue<DeliveredEvent>(iteratorBuffer)
    const onInvalid = onInvalidOf(request)
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
        const start = from === "now" ? yield* transport.head(address).pipe(Effect.retry(startRetry)) : from
        // A refused start cursor rejects `ready` (and ends the iterator with the same error).
        if (from !== "now" && transport.checkStart) yield* transport.checkStart(address, from)
        markReady(start)
        yield* subscriber
          .subscribe({ tenant: request.tenant, channel: request.channel, from: start, onInvalid })
          // Typed events are delivered events with `data` decoded by the schema.
          .pipe(Stream.runForEachArray((events) => queue.offer(events as ReadonlyArray<DeliveredEvent>)))
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
      unbind()
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
    const unbind = bindSignal(request.signal, close)
    handles.add(subscription)
    return subscription
  }

  const consume = (
    request: ConsumeOptions<ChannelRef>,
    handler: ConsumeHandler<ChannelEvent<ChannelRef>>,
  ): Consumer => {
    ensureOpen()
    if (request.signal?.aborted === true) {
      const close = async () => {}
      return { done: Promise.resolve(), close, [Symbol.asyncDispose]: close }
    }
    const fiber = runtime.runFork(
      Subscriber.use((s) =>
        s.consume(request, (event, attempt) =>
          // The signal is Effect's own: it aborts when this handler's fiber is interrupted,
          // which a stopping member does once `stopGraceMs` has passed.
          Effect.tryPromise(async (signal) => handler(event, attempt, signal)),
        ),
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
      unbind()
      handles.delete(consumer)
      await Effect.runPromise(Fiber.interrupt(fiber))
    }
    const consumer: Consumer = { done, close, [Symbol.asyncDispose]: close }
    const unbind = bindSignal(request.signal, close)
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
    subscribe: subscribe as Bus["subscribe"],
    head: (address) => {
      ensureOpen()
      return runtime.runPromise(Transport.use((t) => t.head(address)))
    },
    consume: consume as Bus["consume"],
    deadLetters: (limit = 100) =>
      runtime.runPromise(
        Effect.gen(function* () {
          const store = yield* Effect.serviceOption(DeadLetterStore)
          const transport = yield* Transport
          // An outbox of a writer and a reader only has no dead letters of its own.
          const fromOutbox = Option.isSome(store) ? yield* store.value.deadLetters(limit) : []
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
