import { describe, expect, it } from "vitest"
import {
  defaultNotifyRateThreshold,
  memoryBroker,
  resolveSelection,
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
} from "../src/adapter.js"
import { type BusOptions, ConfigError, createBus, memoryOutbox } from "../src/index.js"
import { asOutbox } from "./support.js"

const pick = (config: SelectionConfig): TransportChoice => {
  const choice = selectTransport(config)
  if (choice instanceof ConfigError) throw new Error(`unexpected ConfigError: ${choice.message}`)
  return choice
}
const refuse = (config: SelectionConfig): ConfigError => {
  const choice = selectTransport(config)
  if (!(choice instanceof ConfigError)) throw new Error(`expected a ConfigError, got ${choice.transport}`)
  expect(choice._tag).toBe("ConfigError")
  expect(choice.retryable).toBe(false)
  return choice
}
const fromEnv = (env: Record<string, string | undefined>, base: SelectionConfig = {}): SelectionConfig => {
  const config = selectionFromEnv(base, env)
  if (config instanceof ConfigError) throw new Error(`unexpected ConfigError: ${config.message}`)
  return config
}

describe("selectTransport from config", () => {
  it("an explicit transport is used as is, with the reason", () => {
    for (const transport of ["postgres-notify", "nats", "redis-streams", "memory"] as const) {
      expect(pick({ transport, notifyRate: 1e9 })).toEqual({
        transport,
        reason: `transport is set to ${transport}`,
      })
    }
  })

  it('"auto" picks postgres-notify below notifyRateThreshold and the broker at and above it', () => {
    const base = { transport: "auto", notifyRateThreshold: 500, broker: "nats" } as const
    expect(pick({ ...base, notifyRate: 0 }).transport).toBe("postgres-notify")
    expect(pick({ ...base, notifyRate: 499.9 }).transport).toBe("postgres-notify")
    expect(pick({ ...base, notifyRate: 500 }).transport).toBe("nats")
    expect(pick({ ...base, notifyRate: 10_000 }).transport).toBe("nats")
    expect(pick({ ...base, broker: "redis-streams", notifyRate: 500 }).transport).toBe("redis-streams")
    expect(pick({ ...base, notifyRate: 10 }).reason).toContain("below")
    expect(pick({ ...base, notifyRate: 500 }).reason).toContain("reaches")
  })

  it('"auto" is the default, with the default threshold and a rate of 0', () => {
    expect(defaultNotifyRateThreshold).toBe(1_000)
    expect(pick({}).transport).toBe("postgres-notify")
    expect(pick({ notifyRate: defaultNotifyRateThreshold - 1, broker: "nats" }).transport).toBe(
      "postgres-notify",
    )
    expect(pick({ notifyRate: defaultNotifyRateThreshold, broker: "nats" }).transport).toBe("nats")
  })

  it("ConfigError: no broker at or above the threshold, unknown names, bad numbers", () => {
    expect(refuse({ notifyRate: 5_000 }).message).toContain("no broker is configured")
    refuse({ notifyRate: 5_000, broker: "kafka" as never })
    refuse({ transport: "kafka" as never })
    refuse({ notifyRateThreshold: 0 })
    refuse({ notifyRateThreshold: -1 })
    refuse({ notifyRateThreshold: Number.NaN })
    refuse({ notifyRate: -1 })
    refuse({ notifyRate: Number.NaN })
  })
})

describe("selectionFromEnv", () => {
  it("reads BUS_TRANSPORT, BUS_NOTIFY_RATE, BUS_NOTIFY_RATE_THRESHOLD and BUS_BROKER", () => {
    expect(
      fromEnv({
        BUS_TRANSPORT: "auto",
        BUS_NOTIFY_RATE: "1200.5",
        BUS_NOTIFY_RATE_THRESHOLD: "800",
        BUS_BROKER: "redis-streams",
      }),
    ).toEqual({ transport: "auto", notifyRate: 1200.5, notifyRateThreshold: 800, broker: "redis-streams" })
  })

  it("set variables override the config; unset, empty and blank ones leave it alone", () => {
    const base: SelectionConfig = {
      transport: "auto",
      notifyRate: 10,
      notifyRateThreshold: 100,
      broker: "nats",
    }
    expect(fromEnv({}, base)).toEqual(base)
    expect(fromEnv({ BUS_NOTIFY_RATE: "", BUS_BROKER: "  ", BUS_TRANSPORT: undefined }, base)).toEqual(base)
    expect(fromEnv({ BUS_NOTIFY_RATE: "250" }, base)).toEqual({ ...base, notifyRate: 250 })
    expect(fromEnv({ BUS_TRANSPORT: " memory " }, base)).toEqual({ ...base, transport: "memory" })
    expect(fromEnv({ BUS_BROKER: "redis-streams" }, base)).toEqual({ ...base, broker: "redis-streams" })
  })

  it('"auto" flips on either side of the threshold from the environment alone', () => {
    const config: SelectionConfig = { transport: "auto", notifyRate: 10, broker: "nats" }
    expect(pick(fromEnv({}, config)).transport).toBe("postgres-notify")
    expect(pick(fromEnv({ BUS_NOTIFY_RATE: "999" }, config)).transport).toBe("postgres-notify")
    expect(pick(fromEnv({ BUS_NOTIFY_RATE: "1000" }, config)).transport).toBe("nats")
    expect(pick(fromEnv({ BUS_NOTIFY_RATE_THRESHOLD: "10" }, config)).transport).toBe("nats")
    expect(pick(fromEnv({ BUS_NOTIFY_RATE_THRESHOLD: "11" }, config)).transport).toBe("postgres-notify")
    expect(pick(fromEnv({ BUS_NOTIFY_RATE: "5000", BUS_BROKER: "redis-streams" }, config)).transport).toBe(
      "redis-streams",
    )
    // An explicit BUS_TRANSPORT wins over the rate.
    expect(
      pick(fromEnv({ BUS_TRANSPORT: "postgres-notify", BUS_NOTIFY_RATE: "5000" }, config)).transport,
    ).toBe("postgres-notify")
    // And BUS_TRANSPORT=auto turns a fixed transport in code into a rate decision.
    expect(
      pick(
        fromEnv({ BUS_TRANSPORT: "auto", BUS_NOTIFY_RATE: "5000" }, { broker: "nats", transport: "memory" }),
      ).transport,
    ).toBe("nats")
  })

  it("ConfigError naming the variable for values that are not numbers ≥ 0", () => {
    for (const [name, raw] of [
      ["BUS_NOTIFY_RATE", "fast"],
      ["BUS_NOTIFY_RATE", "-1"],
      ["BUS_NOTIFY_RATE", "Infinity"],
      ["BUS_NOTIFY_RATE", "NaN"],
      ["BUS_NOTIFY_RATE_THRESHOLD", "1e999"],
      ["BUS_NOTIFY_RATE_THRESHOLD", "ten"],
    ] as const) {
      const result = selectionFromEnv({}, { [name]: raw })
      expect(result, `${name}=${raw}`).toBeInstanceOf(ConfigError)
      expect((result as ConfigError).message).toContain(name)
    }
  })

  it("bad names from the environment are refused by selection", () => {
    expect(selectTransport(fromEnv({ BUS_TRANSPORT: "kafka" }))).toBeInstanceOf(ConfigError)
    expect(selectTransport(fromEnv({ BUS_NOTIFY_RATE_THRESHOLD: "0" }))).toBeInstanceOf(ConfigError)
    expect(selectTransport(fromEnv({ BUS_NOTIFY_RATE: "5000" }))).toBeInstanceOf(ConfigError) // no broker
    expect(selectTransport(fromEnv({ BUS_NOTIFY_RATE: "5000", BUS_BROKER: "kafka" }))).toBeInstanceOf(
      ConfigError,
    )
  })

  // Fails on the current code: an unknown broker is only noticed once the rate reaches
  // the threshold, i.e. at the very moment the operator flips, when the bus then refuses
  // to start. A typo in BUS_BROKER should be refused the day it is deployed. See the report.
  it("an unknown broker is refused even while the rate is below the threshold", () => {
    expect(selectTransport(fromEnv({ BUS_NOTIFY_RATE: "10", BUS_BROKER: "nast" }))).toBeInstanceOf(
      ConfigError,
    )
  })
})

describe("resolveSelection and createBus", () => {
  // A memory outbox standing in for Postgres (its own transport named postgres-notify), so
  // the choice is observable without a database.
  const options = (extra: Partial<BusOptions> = {}, store = memoryOutbox()): BusOptions => ({
    outbox: asOutbox(store, "postgres-notify"),
    transport: { use: "auto", notifyRate: 10, broker: memoryBroker() },
    relay: false,
    ...extra,
  })

  it("resolveSelection reads the given environment, or none with env: false", () => {
    expect((resolveSelection(options({ env: false })) as TransportChoice).transport).toBe("postgres-notify")
    expect(
      (resolveSelection(options({ env: { BUS_NOTIFY_RATE: "2000" } })) as TransportChoice).transport,
    ).toBe("memory-broker")
    expect(resolveSelection(options({ env: { BUS_NOTIFY_RATE: "x" } }))).toBeInstanceOf(ConfigError)
  })

  it("auto below the threshold keeps the outbox's own transport: memory for memoryOutbox()", async () => {
    const bus = await createBus({ outbox: memoryOutbox(), env: false })
    expect(bus.selection.transport).toBe("memory")
    await bus.close()
  })

  it("createBus picks the outbox's transport below the threshold from config", async () => {
    const bus = await createBus(options({ env: false }))
    expect(bus.selection.transport).toBe("postgres-notify")
    expect(bus.capabilities.name).toBe("memory")
    await bus.close()
  })

  it("createBus picks the broker at the threshold from config", async () => {
    const bus = await createBus(
      options({ env: false, transport: { notifyRate: 1_000, broker: memoryBroker() } }),
    )
    expect(bus.selection.transport).toBe("memory-broker")
    expect(bus.capabilities).toMatchObject({ name: "memory-broker", needsRelay: true, dedupesSends: true })
    await bus.close()
  })

  it("BUS_BROKER picks one of several brokers by name", () => {
    const fake = { ...memoryBroker(), name: "nats" as const }
    const two = options({ transport: { notifyRate: 5_000, broker: [memoryBroker(), fake] } })
    expect((resolveSelection({ ...two, env: {} }) as TransportChoice).transport).toBe("memory-broker")
    expect((resolveSelection({ ...two, env: { BUS_BROKER: "nats" } }) as TransportChoice).transport).toBe(
      "nats",
    )
  })

  it("createBus flips with the environment alone, and events flow through the relay to the broker", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus(
      options({ env: { BUS_NOTIFY_RATE: "5000" }, relay: { maxIdleMs: 20 } }, outbox),
    )
    expect(bus.selection.transport).toBe("memory-broker")
    const sub = bus.subscribe({ tenant: "acme", channel: "orders", from: "beginning" })
    await outbox.transaction((tx) =>
      bus.publish(tx, [
        { tenant: "acme", channel: "orders", type: "a", data: 1 },
        { tenant: "acme", channel: "orders", type: "b", data: 2 },
      ]),
    )
    const got: Array<string> = []
    for await (const e of sub) {
      got.push(e.type)
      if (got.length === 2) break
    }
    expect(got).toEqual(["a", "b"])
    await bus.close()
  })

  it("createBus fails with ConfigError when the selected transport was not provided", async () => {
    const e = await createBus(options({ env: { BUS_TRANSPORT: "redis-streams" } })).catch((x: unknown) => x)
    expect(e).toBeInstanceOf(ConfigError)
    expect((e as ConfigError).message).toContain("no redis-streams transport was provided")
    const e2 = await createBus({ outbox: memoryOutbox(), env: { BUS_TRANSPORT: "postgres-notify" } }).catch(
      (x: unknown) => x,
    )
    expect((e2 as ConfigError)._tag).toBe("ConfigError")
    expect((e2 as ConfigError).message).toContain("provided: memory")
  })

  it("createBus fails with ConfigError for bad environment values and a missing broker", async () => {
    const e1 = await createBus(options({ env: { BUS_NOTIFY_RATE_THRESHOLD: "-5" } })).catch((x: unknown) => x)
    expect(e1).toBeInstanceOf(ConfigError)
    const e2 = await createBus(options({ env: { BUS_NOTIFY_RATE: "5000" }, transport: {} })).catch(
      (x: unknown) => x,
    )
    expect(e2).toBeInstanceOf(ConfigError)
    expect((e2 as ConfigError).message).toContain("no broker")
  })
})
