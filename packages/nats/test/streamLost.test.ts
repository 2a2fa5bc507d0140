import { readdirSync, readFileSync, rmSync } from "node:fs"
import { type Bus, createBus, type DeliveredEvent, memoryOutbox } from "@bus/core"
import { splitCursor } from "@bus/core/adapter"
import { type ServerHandle, startNats } from "@bus/test-infra"
import { jetstreamManager } from "@nats-io/jetstream"
import type { NatsConnection } from "@nats-io/transport-node"
import { afterAll, beforeAll, expect, it, vi } from "vitest"
import { durableName } from "../src/adapter.js"
import { nats } from "../src/index.js"
import { plainConnection, uniqueName, waitFor } from "./support.js"

/**
 * Broker data loss from outside the SDK, as an operator or the infrastructure causes it:
 * the event stream deleted through a separate connection, the server's store wiped (server
 * stopped, store directory removed, server started again), the stream replaced by another
 * of the same name. The bus must re-create the stream, resend from the outbox, and
 * deliver every event exactly once to subscribers and groups; old cursors must resume by
 * their outbox position or be refused, never skip.
 */

let server: ServerHandle
let nc: NatsConnection

beforeAll(async () => {
  server = await startNats()
  nc = await plainConnection(server.url)
})

afterAll(async () => {
  await nc?.close()
  await server?.stop()
})

/** The store directory of the nats-server listening on `url` (its `-sd`), found from outside. */
const storeDirOf = (url: string): string => {
  const port = new URL(url).port
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue
    let args: Array<string>
    try {
      args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")
    } catch {
      continue
    }
    if (!args[0]?.includes("nats-server")) continue
    const p = args.indexOf("-p")
    const sd = args.indexOf("-sd")
    if (p >= 0 && args[p + 1] === port && sd >= 0 && args[sd + 1] !== undefined) return args[sd + 1]!
  }
  throw new Error(`no nats-server process on port ${port}`)
}

/** A subscription read in the background. */
const collect = (bus: Bus, request: { tenant: string; channel: string; from?: string }) => {
  const sub = bus.subscribe(request)
  const events: Array<DeliveredEvent> = []
  let error: unknown
  const reading = (async () => {
    try {
      for await (const e of sub) events.push(e)
    } catch (e) {
      error = e
    }
  })()
  return {
    sub,
    events,
    get error() {
      return error
    },
    ids: () => events.map((e) => e.id),
    close: async () => {
      await sub.close()
      await reading
    },
  }
}

const setup = async (streamCheckMs?: number, group = true) => {
  const outbox = memoryOutbox()
  const bus = await createBus({
    outbox,
    transport: {
      use: "nats",
      broker: nats({ servers: server.url, ...(streamCheckMs ? { streamCheckMs } : {}) }),
    },
    env: false,
  })
  const tenant = uniqueName("t")
  const channel = uniqueName("c")
  const publish = async (n: number, label: string) =>
    (
      await outbox.transaction((tx) =>
        bus.publish(
          tx,
          Array.from({ length: n }, (_, seq) => ({
            tenant,
            channel,
            type: "lost.test",
            data: { label, seq },
          })),
        ),
      )
    ).ids
  const handled: Array<string> = []
  const consumer = group
    ? bus.consume({ tenant, channel, group: "g" }, (e) => {
        handled.push(e.id)
      })
    : { close: async () => {} }
  return { outbox, bus, tenant, channel, publish, handled, consumer }
}

/** The stream's `created`, or undefined while it is missing or the server does not answer. */
const streamCreated = async (): Promise<string | undefined> => {
  try {
    const jsm = await jetstreamManager(nc, { timeout: 1_000 })
    return (await jsm.streams.info("BUS")).created
  } catch {
    return undefined
  }
}

it("a stream deleted by an operator is re-created and refilled from the outbox: subscribers and groups get every event once; old cursors resume or are refused", async () => {
  const { bus, tenant, channel, publish, handled, consumer } = await setup()
  const live = collect(bus, { tenant, channel, from: "beginning" })
  try {
    const before = await publish(50, "before")
    await waitFor(() => live.events.length >= 50 && handled.length >= 50, 20_000, "the first 50")
    const createdBefore = await streamCreated()
    const oldCursor = live.events[9]!.cursor
    expect(oldCursor).toMatch(/^nats2:[0-9a-f]{8}\.[0-9a-f]{8}.\d+~@[0-9a-f]{8}:mem1:/)

    // The operator deletes the stream from outside the SDK; producers keep publishing.
    const jsm = await jetstreamManager(nc)
    const deletedAt = Date.now()
    await jsm.streams.delete("BUS")
    const during = await publish(50, "during")
    await waitFor(
      async () => {
        const c = await streamCreated()
        return c !== undefined && c !== createdBefore
      },
      30_000,
      "the stream re-created",
    )
    const recreatedMs = Date.now() - deletedAt
    const all = [...before, ...during]
    await waitFor(
      () => live.events.length >= 100 && new Set(handled).size >= 100,
      60_000,
      () => `every event after the loss (subscriber ${live.events.length}, group ${new Set(handled).size})`,
    )
    const recoveredMs = Date.now() - deletedAt
    const after = await publish(10, "after")
    await waitFor(() => live.events.length >= 110 && new Set(handled).size >= 110, 20_000, "the next 10")
    const want = [...all, ...after]
    console.log(
      `nats fault "stream deleted": sent=${want.length} delivered=${live.events.length} duplicates=${live.events.length - new Set(live.ids()).size} handled=${new Set(handled).size} handler duplicates=${handled.length - new Set(handled).size}; re-created after ${recreatedMs} ms, everything delivered ${recoveredMs} ms after the delete`,
    )
    expect(live.error).toBeUndefined()
    expect(live.ids()).toEqual(want)
    expect(handled.length).toBe(want.length)
    expect(new Set(handled)).toEqual(new Set(want))

    // A cursor of the deleted stream resumes by the outbox frontier it carries: exactly the rest.
    const resumed = collect(bus, { tenant, channel, from: oldCursor })
    await resumed.sub.ready
    await waitFor(() => resumed.events.length >= 100, 20_000, "the rest after the old cursor")
    expect(resumed.ids()).toEqual(want.slice(10))
    await resumed.close()
    // Without its frontier, the old stream's sequence means nothing: refused, not skipped.
    const bare = oldCursor.split("~")[0]!
    const refused = bus.subscribe({ tenant, channel, from: bare })
    await expect(refused.ready).rejects.toMatchObject({ _tag: "CursorInvalid", reason: "expired" })
    await refused.close()
  } finally {
    await live.close()
    await consumer.close()
    await bus.close()
  }
})

it("cursors carry their address: another channel's cursor is refused (ready rejects, the iterator fails); legacy nats1: cursors are accepted unchecked", async () => {
  const { bus, tenant, channel, publish, consumer } = await setup()
  const other = uniqueName("c")
  const live = collect(bus, { tenant, channel, from: "beginning" })
  try {
    const ids = await publish(5, "a")
    await waitFor(() => live.events.length >= 5, 20_000, "five events")
    const cursor = live.events[1]!.cursor
    const foreign = bus.subscribe({ tenant, channel: other, from: cursor })
    await expect(foreign.ready).rejects.toMatchObject({ _tag: "CursorInvalid", reason: "address" })
    await expect(
      (async () => {
        for await (const _ of foreign) {
          // nothing: the iterator must fail
        }
      })(),
    ).rejects.toMatchObject({ _tag: "CursorInvalid", reason: "address" })
    const otherTenant = bus.subscribe({ tenant: uniqueName("t"), channel, from: cursor })
    await expect(otherTenant.ready).rejects.toMatchObject({ _tag: "CursorInvalid", reason: "address" })
    // A version-1 cursor (no address, no stream identity) still resumes by its sequence.
    const seq = /\.(\d+)~/.exec(cursor)![1]
    const legacy = collect(bus, { tenant, channel, from: `nats1:${seq}` })
    await legacy.sub.ready
    await waitFor(() => legacy.events.length >= 3, 20_000, "the legacy cursor's rest")
    expect(legacy.ids()).toEqual(ids.slice(2))
    await legacy.close()
    // An outbox cursor (flip, docs/flip.md) is checked by the outbox and resumes exactly.
    const outboxCursor = splitCursor(live.events[2]!.cursor).frontier!
    const flipped = collect(bus, { tenant, channel, from: outboxCursor })
    await flipped.sub.ready
    await waitFor(() => flipped.events.length >= 2, 20_000, "the rest after the outbox cursor")
    expect(flipped.ids()).toEqual(ids.slice(3))
    await flipped.close()
  } finally {
    await live.close()
    await consumer.close()
    await bus.close()
  }
})

it("a wiped server store (stop, remove the store, start): the stream is re-created after the reconnect and refilled; nothing lost, no handler duplicates", async () => {
  const { bus, tenant, channel, publish, handled, consumer } = await setup()
  const live = collect(bus, { tenant, channel, from: "beginning" })
  try {
    const before = await publish(40, "before")
    await waitFor(() => live.events.length >= 40 && handled.length >= 40, 20_000, "the first 40")
    const dir = storeDirOf(server.url)
    await server.kill()
    rmSync(dir, { recursive: true, force: true })
    const wipedAt = Date.now()
    const during = await publish(40, "during")
    await server.restart()
    const upAt = Date.now()
    await waitFor(async () => (await streamCreated()) !== undefined, 30_000, "the stream re-created")
    const recreatedMs = Date.now() - upAt
    const want = [...before, ...during]
    await waitFor(
      () => live.events.length >= 80 && new Set(handled).size >= 80,
      60_000,
      () => `every event after the wipe (subscriber ${live.events.length}, group ${new Set(handled).size})`,
    )
    const recoveredMs = Date.now() - upAt
    console.log(
      `nats fault "store wiped": sent=${want.length} delivered=${live.events.length} duplicates=${live.events.length - new Set(live.ids()).size} handled=${new Set(handled).size} handler duplicates=${handled.length - new Set(handled).size}; server down ${upAt - wipedAt} ms; re-created ${recreatedMs} ms and everything delivered ${recoveredMs} ms after the server was back`,
    )
    expect(live.error).toBeUndefined()
    expect(live.ids()).toEqual(want)
    expect(handled.length).toBe(want.length)
    expect(new Set(handled)).toEqual(new Set(want))
  } finally {
    await live.close()
    await consumer.close()
    await bus.close()
  }
})

it("a stream replaced by another of the same name while the bus is idle is found by the periodic check (streamCheckMs) and refilled; an old cursor resumes by its outbox frontier", async () => {
  const { bus, tenant, channel, publish } = await setup(1_000, false)
  const subject = `bus.${tenant}.${channel}`
  const jsm = await jetstreamManager(nc)
  const storedOf = async () =>
    (await jsm.streams.info("BUS", { subjects_filter: subject }).catch(() => undefined))?.state.subjects?.[
      subject
    ] ?? 0
  const handled: Array<string> = []
  let consumer: { close(): Promise<void> } | undefined
  try {
    const before = await publish(20, "before")
    const first = collect(bus, { tenant, channel, from: "beginning" })
    await waitFor(() => first.events.length >= 20, 20_000, "the first 20")
    const oldCursor = first.events[9]!.cursor
    await first.close()
    // No reader is left to notice: only the transport's periodic check can.
    const info = await jsm.streams.info("BUS")
    const replacedAt = Date.now()
    await jsm.streams.delete("BUS")
    await jsm.streams.add({ ...info.config })
    expect(await storedOf()).toBe(0)
    await waitFor(async () => (await storedOf()) >= 20, 30_000, "the 20 events resent into the new stream")
    const refilledMs = Date.now() - replacedAt
    const after = await publish(20, "after")
    const want = [...before, ...after]
    const resumed = collect(bus, { tenant, channel, from: oldCursor })
    await resumed.sub.ready
    consumer = bus.consume({ tenant, channel, group: "g" }, (e) => {
      handled.push(e.id)
    })
    await waitFor(
      () => resumed.events.length >= 30 && new Set(handled).size >= 40,
      40_000,
      () =>
        `every event after the replacement (subscriber ${resumed.events.length}, group ${new Set(handled).size})`,
    )
    const stored = await storedOf()
    console.log(
      `nats fault "stream replaced while idle": sent=${want.length} stored again=${stored} delivered from an old cursor=${resumed.events.length} (want ${want.length - 10}) duplicates=${resumed.events.length - new Set(resumed.ids()).size} handled=${new Set(handled).size} handler duplicates=${handled.length - new Set(handled).size}; found and refilled ${refilledMs} ms after the replacement (streamCheckMs 1000)`,
    )
    expect(stored).toBe(40)
    expect(resumed.error).toBeUndefined()
    expect(resumed.ids()).toEqual(want.slice(10))
    await resumed.close()
    expect(handled.length).toBe(want.length)
    expect(new Set(handled)).toEqual(new Set(want))
  } finally {
    await consumer?.close()
    await bus.close()
  }
})

it("a group's durable consumer deleted from outside is made again; the group skips what it handled (0 handler duplicates, 0 lost)", async () => {
  const { bus, tenant, channel, publish, handled, consumer } = await setup()
  try {
    const before = await publish(30, "before")
    await waitFor(() => new Set(handled).size >= 30, 20_000, "the first 30 handled")
    const jsm = await jetstreamManager(nc)
    const deletedAt = Date.now()
    await jsm.consumers.delete("BUS", durableName("BUS", `bus.${tenant}.${channel}`, "g"))
    const after = await publish(30, "after")
    const want = [...before, ...after]
    await waitFor(
      () => new Set(handled).size >= 60,
      60_000,
      () => `all 60 handled (${new Set(handled).size})`,
    )
    console.log(
      `nats fault "group consumer deleted": sent=${want.length} handled=${new Set(handled).size} handler duplicates=${handled.length - new Set(handled).size}; all handled ${Date.now() - deletedAt} ms after the delete`,
    )
    expect(handled.length).toBe(want.length)
    expect(new Set(handled)).toEqual(new Set(want))
  } finally {
    await consumer.close()
    await bus.close()
  }
})

it("a first start (no stream, no relay position stored) forwards the backlog once and warns of nothing; a stream lost while no bus ran is refilled at the next start", async () => {
  const lines: Array<string> = []
  const log = console.log.bind(console)
  vi.spyOn(console, "log").mockImplementation((...args: Array<unknown>) => {
    const line = args.map(String).join(" ")
    if (line.includes("relay:")) lines.push(line)
    log(...args)
  })
  const name = uniqueName("first")
    .replace(/[^a-z0-9]/gi, "")
    .toUpperCase()
  const prefix = name.toLowerCase()
  const outbox = memoryOutbox()
  // Events committed before any relay ran: published through a bus that needs none.
  const writer = await createBus({ outbox, transport: { use: "memory" }, env: false })
  const jsm = await jetstreamManager(nc)
  const stored = async () => (await jsm.streams.info(name).catch(() => undefined))?.state.messages ?? 0
  const publish = (n: number, label: string) =>
    outbox.transaction((tx) =>
      writer.publish(
        tx,
        Array.from({ length: n }, (_, seq) => ({
          tenant: `t${seq % 5}`,
          channel: "first",
          type: "first.start",
          data: { label, seq },
        })),
      ),
    )
  const start = () =>
    createBus({
      outbox,
      transport: {
        use: "nats",
        broker: nats({ servers: server.url, subjectPrefix: prefix, stream: { name } }),
      },
      env: false,
    })
  let bus: Bus | undefined
  try {
    await publish(200, "before")
    bus = await start()
    await waitFor(async () => (await stored()) === 200, 30_000, "the backlog on the new stream")
    // Nothing was lost: the stream is new because this is the first start.
    expect(lines.filter((l) => l.includes("resen"))).toEqual([])
    await bus.close()
    bus = undefined

    // Now the stream is lost while no bus runs; the next start creates it and must resend.
    await jsm.streams.delete(name)
    await publish(50, "after")
    bus = await start()
    await waitFor(
      async () => (await stored()) === 250,
      30_000,
      () => `all 250 events on the re-created stream`,
    )
    expect(
      lines.some((l) => l.includes("resends the retained outbox") && l.includes("did not exist at start")),
    ).toBe(true)
  } finally {
    vi.restoreAllMocks()
    await bus?.close()
    await writer.close()
    await jsm.streams.delete(name).catch(() => undefined)
    await jsm.streams.delete(`${name}_DLQ`).catch(() => undefined)
  }
})
