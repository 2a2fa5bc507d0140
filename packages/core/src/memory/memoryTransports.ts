import { Effect, Layer } from "effect"
import type { OutboxStore } from "../contracts/OutboxStore.js"
import { Transport } from "../contracts/Transport.js"
import { outboxTransport } from "../outbox-transport/OutboxTransport.js"
import { MemoryOutbox } from "./MemoryOutbox.js"

/**
 * In-memory transports for users' unit tests.
 *
 * @module
 */

/**
 * The in-memory transport: delivers straight from the in-memory outbox in context,
 * as postgres-notify does from Postgres.
 */
export const memoryTransport = (): Layer.Layer<Transport, never, OutboxStore> =>
  outboxTransport({ name: "memory", capabilities: { needsRelay: false } })

/**
 * An in-memory broker: a stand-in for NATS or Redis in unit tests of relay setups.
 * Events reach it only through the relay; it drops repeated sends of one event id, as
 * JetStream does with `Nats-Msg-Id`.
 */
export const memoryBroker = (broker: MemoryOutbox = MemoryOutbox.make()): Layer.Layer<Transport> =>
  Layer.effect(
    Transport,
    Effect.gen(function* () {
      const inner = yield* Transport
      const sent = new Set<string>()
      return Transport.of({
        ...inner,
        capabilities: { ...inner.capabilities, name: "memory-broker", needsRelay: true, dedupesSends: true },
        send: (event) =>
          Effect.sync(() => {
            if (sent.has(event.id)) return
            sent.add(event.id)
            broker.commitBatch([event])
          }),
      })
    }),
  ).pipe(Layer.provide(outboxTransport({ name: "memory-broker" })), Layer.provide(broker.layer))
