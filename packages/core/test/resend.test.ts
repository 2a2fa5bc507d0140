import { Effect, Layer } from "effect"
import { expect, it } from "vitest"
import {
  attachResendSignal,
  makeResendSignal,
  relayBatch,
  resendClaimGraceMs,
  Transport,
} from "../src/adapter.js"
import { memoryOutbox } from "../src/index.js"
import { events, instrumentedBroker, instrumentedStore, quiet } from "./support.js"

/**
 * The relay's side of broker data loss (relay/resend.ts): a transport that reports a loss
 * through its resend signal gets the retained outbox again, once per loss.
 */
it("a reported broker loss rewinds every partition to the retained outbox's beginning, once per loss", async () => {
  const outbox = memoryOutbox()
  const broker = instrumentedBroker(memoryOutbox())
  const signal = makeResendSignal()
  const withSignal = Layer.effect(
    Transport,
    Effect.gen(function* () {
      const t = yield* Transport
      return attachResendSignal(Transport.of({ ...t }), signal)
    }),
  ).pipe(Layer.provide(broker.layer))
  const layer = Layer.merge(withSignal, instrumentedStore(outbox).layer)
  const run = <A, E>(self: Effect.Effect<A, E, never>) => Effect.runPromise(quiet(self))
  const batch = () => run(Effect.provide(relayBatch({ owner: "r" }), layer))

  outbox.commitBatch([...events("t", "a", 30), ...events("t", "b", 20)])
  expect((await batch()).forwarded).toBe(50)
  expect((await batch()).forwarded).toBe(0)
  expect(broker.log.total).toBe(50)

  signal.lost("test: the broker lost everything")
  expect(signal.current()).toMatchObject({ generation: 1, reason: "test: the broker lost everything" })
  // Every retained row goes out again (the broker drops what it still has), in one pass.
  outbox.commitBatch(events("t", "a", 5, 30))
  expect((await batch()).forwarded).toBe(55)
  expect(broker.log.total).toBe(105)
  // Once per loss: claimed again (still within the grace), the partitions are not rewound twice.
  expect(resendClaimGraceMs).toBeGreaterThan(0)
  expect((await batch()).forwarded).toBe(0)
  signal.lost("test: lost again")
  expect((await batch()).forwarded).toBe(55)
  expect(broker.log.total).toBe(160)
})
