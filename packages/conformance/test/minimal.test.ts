import { type Bus, createBus } from "@bus/core"
import { memoryBroker } from "@bus/core/adapter"
import { afterAll, describe, expect, it } from "vitest"
import { runConformanceSuite } from "../src/index.js"
import { ExampleOutbox } from "./exampleOutbox.js"

// A new database's first step (docs/new-transport.md): an outbox of a writer and a reader
// only. Its transport declares no consumer groups, so the suite runs everything else —
// delivery, resume and cursors, inputs, isolation, resources, load, the fault harness.
const outbox = new ExampleOutbox()

runConformanceSuite({
  name: "writer+reader outbox",
  makeBus: () => createBus({ outbox, env: false }),
  transaction: (fn) => outbox.transaction(fn),
  extraFaults: { "no fault (harness self-check)": async () => {} },
})

describe("an outbox of a writer and a reader only", () => {
  const buses: Array<Bus> = []
  afterAll(async () => {
    await Promise.all(buses.map((b) => b.close()))
  })

  it("declares no consumer groups, and consume says why with ConfigError", async () => {
    const bus = await createBus({ outbox, env: false })
    buses.push(bus)
    expect(bus.capabilities.consumerGroups).toBe(false)
    const consumer = bus.consume({ tenant: "acme", channel: "orders", group: "billing" }, async () => {})
    const error = await consumer.done.then(
      () => undefined,
      (e: unknown) => e,
    )
    expect((error as { _tag?: string })._tag).toBe("ConfigError")
    expect(String((error as Error).message)).toContain("GroupStore")
    expect(await bus.deadLetters()).toEqual([])
  })

  it("refuses a broker at start with ConfigError naming the services it lacks", async () => {
    const error = await createBus({
      outbox,
      env: false,
      transport: { use: "memory-broker", broker: memoryBroker() },
    }).then(
      (bus) => {
        buses.push(bus)
        return undefined
      },
      (e: unknown) => e,
    )
    expect((error as { _tag?: string })._tag).toBe("ConfigError")
    for (const service of ["OutboxRelay", "GroupStore", "DeadLetterStore", "OutboxRetention"]) {
      expect(String((error as Error).message)).toContain(service)
    }
  })
})
