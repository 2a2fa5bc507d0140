import { Effect, Layer, Option, Stream } from "effect"
import { OutboxReader } from "../contracts/outboxStore.js"
import { type SendItem, type SendMeta, Transport } from "../contracts/transport.js"
import type { Broker } from "../contracts/wiring.js"
import { checkCursorAddress, notCoveredBy, outboxCursorOf, splitCursor, withFrontier } from "../flip/flip.js"
import type { DeliveredEvent } from "../model/envelope.js"
import { outboxTransport } from "../outboxTransport/transport.js"
import { MemoryOutbox } from "./store.js"

/**
 * The in-memory broker for unit tests of relay setups (the in-memory outbox's own
 * transport is built by `memoryOutbox()`).
 *
 * @module
 */

/** What a broker outbox stored with each event: kept per broker, like a real broker's stream. */
const stored = new WeakMap<
  MemoryOutbox,
  { readonly sent: Set<string>; readonly meta: Map<string, SendMeta> }
>()

/**
 * The in-memory outbox's own transport as a layer over the `OutboxReader` in context (what
 * `memoryOutbox()` gives `createBus`), for Effect tests that assemble layers by hand.
 */
export const memoryTransport = (): Layer.Layer<Transport, never, OutboxReader> =>
  outboxTransport({ name: "memory", capabilities: { needsRelay: false } })

/**
 * An in-memory broker: a stand-in for NATS or Redis in unit tests of relay setups.
 * Events reach it only through the relay; it drops repeated sends of one event id, as
 * JetStream does with `Nats-Msg-Id`. Like the real brokers it keeps each event's outbox
 * position and frontier, so cursors survive a flip between it and the outbox transport
 * (docs/flip.md): an outbox cursor resumes here without gap or duplicate, and its own
 * cursors carry the outbox frontier and their address (`mem2:…~@<tag>:mem1:…`): an outbox or
 * composite cursor of another address is refused (`CursorInvalid` reason `address`).
 */
export const memoryBroker = (
  broker: MemoryOutbox = MemoryOutbox.make(),
): Broker & { readonly layer: Layer.Layer<Transport> } => ({
  name: "memory-broker",
  layer: memoryBrokerLayer(broker),
})

const memoryBrokerLayer = (broker: MemoryOutbox): Layer.Layer<Transport> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const inner = yield* Transport
      // The application's outbox (not the broker's own store), when the bus provides one.
      const outbox = yield* Effect.serviceOption(OutboxReader)
      let state = stored.get(broker)
      if (state === undefined) {
        state = { sent: new Set(), meta: new Map() }
        stored.set(broker, state)
      }
      const { sent, meta } = state
      const decorate = (event: DeliveredEvent): DeliveredEvent => {
        const frontier = meta.get(event.id)?.frontier
        return frontier === undefined
          ? event
          : { ...event, cursor: withFrontier(event.cursor, frontier, event) }
      }
      // One in-memory commit for the lot, repeats of an id dropped.
      const accept = (items: ReadonlyArray<SendItem>): void => {
        const fresh: Array<SendItem["event"]> = []
        for (const { event, meta: m } of items) {
          if (sent.has(event.id)) continue
          sent.add(event.id)
          meta.set(event.id, m ?? {})
          fresh.push(event)
        }
        if (fresh.length > 0) broker.commitBatch(fresh)
      }
      // The inner transport's start check knows only its own cursors; this broker also
      // resumes from outbox cursors and frontiers (below), so it checks only their address
      // up front and reports other refusals from the stream.
      const { checkStart: _ownCursorsOnly, ...innerRest } = inner
      return Transport.of({
        ...innerRest,
        checkStart: (address, from) => {
          const refused = checkCursorAddress(from, address)
          return refused === undefined ? Effect.void : Effect.fail(refused)
        },
        capabilities: { ...inner.capabilities, name: "memory-broker", needsRelay: true, dedupesSends: true },
        subscribe: (request) => {
          const from = request.from ?? "now"
          if (from === "now" || from === "beginning")
            return inner.subscribe(request).pipe(Stream.map(decorate))
          const refused = checkCursorAddress(from, request)
          if (refused !== undefined) return Stream.fail(refused)
          const { base } = splitCursor(from)
          if (broker.store.ownsCursor(base)) {
            return inner.subscribe({ ...request, from: base }).pipe(Stream.map(decorate))
          }
          const cursor = outboxCursorOf(outbox, from)
          if (cursor === undefined || Option.isNone(outbox)) return inner.subscribe(request)
          const keep = notCoveredBy(outbox.value, cursor)
          return inner.subscribe({ ...request, from: "beginning" }).pipe(
            Stream.filter((event) => keep(meta.get(event.id)?.position)),
            Stream.map(decorate),
          )
        },
        group: (request) =>
          inner.group(request).pipe(
            Stream.map((delivery) => ({
              ...delivery,
              event: decorate(delivery.event),
              position: meta.get(delivery.event.id)?.position,
              inbox: false,
            })),
          ),
        send: (event, m) => Effect.sync(() => accept([{ event, meta: m }])),
        sendAll: (items, onSent) =>
          Effect.sync(() => {
            accept(items)
            onSent?.(items.length)
            return { sent: items.length }
          }),
      })
    }),
  ).pipe(Layer.provide(outboxTransport({ name: "memory-broker" }).pipe(Layer.provide(broker.layer))))
