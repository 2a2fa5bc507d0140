import { type BusError, createBus, type DeliveredEvent, memoryOutbox } from "@bus/core"
import {
  type Delivery,
  type Envelope,
  makeEnvelope,
  type SendItem,
  type SendOutcome,
  Transport,
} from "@bus/core/adapter"
import { type ServerHandle, startNats } from "@bus/test-infra"
import { jetstreamManager, RetentionPolicy } from "@nats-io/jetstream"
import type { NatsConnection } from "@nats-io/transport-node"
import { Cause, Effect, Exit, Fiber, ManagedRuntime, Queue, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { decodeCursor, durableName, natsTransport } from "../src/adapter.js"
import type { NatsTransportOptions } from "../src/index.js"
import { nats } from "../src/index.js"
import { plainConnection, storedIds, uniqueName, waitFor } from "./support.js"

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

type Runtime = ManagedRuntime.ManagedRuntime<Transport, BusError>

/** A transport runtime on the test server; disposed by the caller. */
const transportRuntime = (options: NatsTransportOptions = {}): Runtime =>
  ManagedRuntime.make(natsTransport({ servers: server.url, ...options }))

const withTransport = async <A>(
  options: NatsTransportOptions,
  fn: (rt: Runtime, t: Transport["Service"]) => Promise<A>,
): Promise<A> => {
  const rt = transportRuntime(options)
  try {
    const t = await rt.runPromise(Transport.use((t) => Effect.succeed(t)))
    return await fn(rt, t)
  } finally {
    await rt.dispose()
  }
}

const envelope = (tenant: string, channel: string, data: Record<string, unknown> = {}) =>
  Effect.runSync(makeEnvelope({ tenant, channel, type: "test.event", data: data as never }))

/** Collects a subscription in the background. */
class Collected {
  readonly events: Array<DeliveredEvent> = []
  error: unknown
  readonly fiber: Fiber.Fiber<void, unknown>
  constructor(rt: Runtime, stream: Stream.Stream<DeliveredEvent, BusError>) {
    this.fiber = rt.runFork(
      stream.pipe(
        Stream.runForEach((e) => Effect.sync(() => this.events.push(e))),
        Effect.catchCause((cause) =>
          Effect.sync(() => {
            this.error = Cause.squash(cause)
          }),
        ),
      ),
    )
  }
  get ids() {
    return this.events.map((e) => e.id)
  }
  stop(rt: Runtime) {
    return rt.runPromise(Fiber.interrupt(this.fiber))
  }
}

describe("send", () => {
  it("stores an event once however often it is sent (Nats-Msg-Id = event id), with trace headers", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const e = Effect.runSync(
        makeEnvelope({
          tenant,
          channel,
          type: "x",
          data: { n: 1 },
          headers: {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            other: "a\r\nb",
          },
        }),
      )
      await rt.runPromise(t.send(e))
      await rt.runPromise(t.send(e))
      await rt.runPromise(t.send(e))
      const stored = await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)
      expect(stored.count).toBe(1)
      expect(stored.ids).toEqual([e.id])
      const jsm = await jetstreamManager(nc)
      const m = await jsm.streams.getMessage("BUS", { last_by_subj: `bus.${tenant}.${channel}` })
      expect(m?.header.get("Nats-Msg-Id")).toBe(e.id)
      expect(m?.header.get("traceparent")).toBe(e.headers.traceparent)
      expect(m?.header.has("other"), "only trace headers become NATS headers").toBe(false)
      expect(m?.json()).toEqual(e)
      console.log("nats send dedupe: sent=3 stored=1 duplicates=0")
    }))

  it("refuses an event over the server's max_payload as not retryable, and declares the limit", async () =>
    withTransport({}, async (rt, t) => {
      expect(t.capabilities).toMatchObject({
        name: "nats",
        needsRelay: true,
        dedupesSends: true,
        consumerGroups: true,
        replay: true,
      })
      expect(t.capabilities.maxPayloadBytes).toBe(1024 * 1024 - 1024)
      const big = { ...envelope("t", "c"), data: "x".repeat(1024 * 1024) }
      const exit = await rt.runPromiseExit(t.send(big))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      expect(error).toMatchObject({ _tag: "PayloadTooLarge", retryable: false, limit: 1024 * 1024 })
    }))
})

/** `sendAll` until every item is stored, resuming from the stored prefix as the relay does. */
const sendAllUntilDone = async (rt: Runtime, t: Transport["Service"], items: ReadonlyArray<SendItem>) => {
  const outcomes: Array<SendOutcome> = []
  for (let done = 0, rounds = 0; done < items.length; rounds++) {
    if (rounds > 20) throw new Error(`sendAll made no progress: ${JSON.stringify(outcomes)}`)
    const outcome = await rt.runPromise(t.sendAll(items.slice(done)))
    outcomes.push(outcome)
    done += outcome.sent
  }
  return outcomes
}

describe("sendAll (pipelined)", () => {
  it("stores a batch of 200 events of one address in order, with their outbox meta, in one call", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const items = Array.from({ length: 200 }, (_, i) => ({
        event: envelope(tenant, channel, { i }),
        meta: { position: `mem1:abcdefab:${i + 1}`, frontier: `mem1:abcdefab:${i}` },
      }))
      const heard: Array<number> = []
      const outcome = await rt.runPromise(t.sendAll(items, (n) => heard.push(n)))
      expect(outcome).toEqual({ sent: 200 })
      expect(heard.at(-1)).toBe(200)
      expect(heard).toEqual([...heard].sort((a, b) => a - b))
      const stored = await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)
      expect(stored.ids).toEqual(items.map((x) => x.event.id))
      // Sent again: nothing new (Nats-Msg-Id).
      expect(await rt.runPromise(t.sendAll(items))).toEqual({ sent: 200 })
      expect((await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)).count).toBe(200)
      // The cursors carry the frontiers the relay passed.
      const sub = new Collected(rt, t.subscribe({ tenant, channel, from: "beginning" }))
      await waitFor(() => sub.events.length >= 200, 10_000, "the batch")
      expect(sub.events[7]!.cursor).toMatch(
        /^nats2:[0-9a-f]{8}\.[0-9a-f]{8}.\d+~@[0-9a-f]{8}:mem1:abcdefab:7$/,
      )
      await sub.stop(rt)
    }))

  it("stops at an event over max_payload: sent = its index, a non-retryable error, nothing after it stored", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const items = Array.from({ length: 20 }, (_, i) => ({
        event:
          i === 12
            ? { ...envelope(tenant, channel), data: "x".repeat(1024 * 1024) }
            : envelope(tenant, channel, { i }),
      }))
      const heard: Array<number> = []
      const outcome = await rt.runPromise(t.sendAll(items, (n) => heard.push(n)))
      expect(outcome.sent).toBe(12)
      expect(outcome.error).toMatchObject({ _tag: "PayloadTooLarge", retryable: false, limit: 1024 * 1024 })
      expect(heard.at(-1)).toBe(12)
      const stored = await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)
      expect(stored.ids).toEqual(items.slice(0, 12).map((x) => x.event.id))
      // The relay parks the big one and goes on with the rest: each stored once, in order.
      const rest = [...items.slice(0, 12), ...items.slice(13)]
      expect(await rt.runPromise(t.sendAll(rest))).toEqual({ sent: 19 })
      expect((await storedIds(nc, "BUS", `bus.${tenant}.${channel}`)).ids).toEqual(
        rest.map((x) => x.event.id),
      )
    }))

  it("a server restart in the middle of a large sendAll: after resuming from `sent`, every event stored once, in order", async () => {
    const own = await startNats()
    let check: NatsConnection | undefined
    try {
      const rt = ManagedRuntime.make(natsTransport({ servers: own.url }))
      try {
        const t = await rt.runPromise(Transport.use((t) => Effect.succeed(t)))
        const tenant = uniqueName("t")
        const channel = uniqueName("c")
        const items = Array.from({ length: 10_000 }, (_, i) => ({
          event: envelope(tenant, channel, { i, pad: "p".repeat(1024) }),
        }))
        // The restart starts from the first acks, while the rest are still in flight.
        let atRestart: number | undefined
        let restarted: Promise<void> | undefined
        const first = rt.runPromise(
          t.sendAll(items, (n) => {
            if (restarted !== undefined) return
            atRestart = n
            restarted = own.restart()
          }),
        )
        await waitFor(() => restarted !== undefined, 10_000, "the first acks")
        await restarted
        const outcome = await first
        const outcomes = [outcome]
        if (outcome.sent < items.length) {
          outcomes.push(...(await sendAllUntilDone(rt, t, items.slice(outcome.sent))))
        }
        console.log(
          `nats sendAll across a restart: ${atRestart} stored before it; sent per call ${JSON.stringify(outcomes.map((o) => o.sent))}`,
        )
        expect(atRestart, "the restart came in the middle of the batch").toBeLessThan(items.length)
        check = await plainConnection(own.url)
        const stored = await storedIds(check, "BUS", `bus.${tenant}.${channel}`)
        expect(stored.count).toBe(items.length)
        expect(stored.ids).toEqual(items.map((x) => x.event.id))
      } finally {
        await rt.dispose()
      }
    } finally {
      await check?.close()
      await own.stop()
    }
  }, 60_000)
})

describe("stream setup", () => {
  it("creates the stream with an explicit duplicate window, and adopts an existing one changing only safe fields", async () => {
    const prefix = uniqueName("p")
    const name = prefix.toUpperCase()
    await withTransport({ subjectPrefix: prefix, stream: { duplicateWindowMs: 90_000 } }, async () => {})
    const jsm = await jetstreamManager(nc)
    const created = await jsm.streams.info(name)
    expect(created.config.subjects).toEqual([`${prefix}.*.*`])
    expect(created.config.duplicate_window).toBe(90_000 * 1e6)
    expect(created.config.retention).toBe(RetentionPolicy.Limits)
    expect((await jsm.streams.info(`${name}_DLQ`)).config.subjects).toEqual([`${prefix}.dlq.*.*`])

    // Adopt with a larger window and a smaller max age: the window grows, the age is left alone.
    await jsm.streams.update(name, { max_age: 3_600_000 * 1e6 })
    await withTransport(
      { subjectPrefix: prefix, stream: { duplicateWindowMs: 180_000, maxAge: 600_000 } },
      async () => {},
    )
    const adopted = await jsm.streams.info(name)
    expect(adopted.config.duplicate_window).toBe(180_000 * 1e6)
    expect(adopted.config.max_age).toBe(3_600_000 * 1e6)
  })

  it("refuses bad options and hostile prefixes with ConfigError", async () => {
    for (const options of [
      { subjectPrefix: "bus.*" },
      { subjectPrefix: "bus..x" },
      { subjectPrefix: "bus >" },
      { subjectPrefix: "" },
      { stream: { name: "a.b" } },
      { stream: { maxAge: 60_000, duplicateWindowMs: 120_000 } },
      { stream: { replicas: 7 } },
      { maxDeliver: 1 },
    ] as Array<NatsTransportOptions>) {
      const rt = transportRuntime(options)
      const exit = await rt.runPromiseExit(Transport.use((t) => Effect.succeed(t)))
      await rt.dispose()
      expect(Exit.isFailure(exit), JSON.stringify(options)).toBe(true)
      expect(Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined).toMatchObject({
        _tag: "ConfigError",
      })
    }
  })
})

describe("subscribe", () => {
  it("from beginning, now and a cursor; garbage and foreign cursors refused; malformed messages skipped", async () =>
    withTransport({}, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const first = Array.from({ length: 5 }, (_, i) => envelope(tenant, channel, { i }))
      for (const e of first) await rt.runPromise(t.send(e))
      // Another tenant's event on a neighbouring subject, and junk on ours.
      await rt.runPromise(t.send(envelope(`${tenant}x`, channel, { other: true })))
      const js = (await jetstreamManager(nc)).jetstream()
      await js.publish(`bus.${tenant}.${channel}`, "not json")
      await js.publish(
        `bus.${tenant}.${channel}`,
        JSON.stringify({ ...envelope(`${tenant}x`, channel), id: "x" }),
      )
      await js.publish(`bus.${tenant}.${channel}`, JSON.stringify(envelope(`${tenant}x`, channel)))

      const all = new Collected(rt, t.subscribe({ tenant, channel, from: "beginning" }))
      await waitFor(() => all.events.length >= 5, 10_000, "the first five")
      // "now" as the facade resolves it: the head, read before the subscription starts
      // (a bare "now" stream has no readiness signal to wait for).
      const now = new Collected(
        rt,
        t.subscribe({ tenant, channel, from: await rt.runPromise(t.head({ tenant, channel })) }),
      )
      const mid = new Collected(rt, t.subscribe({ tenant, channel, from: all.events[1]!.cursor }))
      const later = Array.from({ length: 3 }, (_, i) => envelope(tenant, channel, { later: i }))
      for (const e of later) await rt.runPromise(t.send(e))
      const want = [...first, ...later].map((e) => e.id)
      await waitFor(() => all.events.length >= 8 && now.events.length >= 3 && mid.events.length >= 6, 10_000)
      expect(all.ids).toEqual(want)
      expect(now.ids).toEqual(later.map((e) => e.id))
      expect(mid.ids).toEqual(want.slice(2))
      for (const e of all.events) expect(decodeCursor(e.cursor)).toBeGreaterThan(0)

      // The cursor carries the channel's address tag and the stream's identity.
      const [, tag, sid, seq] = /^nats2:([0-9a-f]{8})\.([0-9a-f]{8})\.(\d+)$/.exec(all.events[1]!.cursor)!
      for (const [cursor, reason] of [
        [`nats2:${tag === "00000000" ? "00000001" : "00000000"}.${sid}.${seq}`, "address"],
        // A stream that no longer exists (no outbox frontier to resume by): refused, not read as a sequence here.
        [`nats2:${tag}.${sid === "00000000" ? "00000001" : "00000000"}.${seq}`, "expired"],
        ["nats2:abc.def.1", "malformed"],
        ["nats1:x", "malformed"],
        ["0", "malformed"],
        ["pg1:abc", "foreign"],
        ["mem1:abcdefab:1", "foreign"],
        ["nats1:999999999", "foreign"],
        // A delivered cursor's outbox frontier (after "~") is checked too.
        [`${all.events[1]!.cursor}~mem1:abcdefab:5x`, "malformed"],
        [`${all.events[1]!.cursor}~`, "malformed"],
        [`${all.events[1]!.cursor}~garbage`, "malformed"],
        [`${all.events[1]!.cursor}~nats1:3`, "malformed"],
        [`${all.events[1]!.cursor}~pg1:${"a".repeat(32)}:1.2:0badc0de`, "malformed"],
      ] as const) {
        const bad = new Collected(rt, t.subscribe({ tenant, channel, from: cursor }))
        await waitFor(() => bad.error !== undefined, 10_000, `the refusal of ${cursor}`)
        expect(bad.error, cursor).toMatchObject({ _tag: "CursorInvalid", reason })
      }
      // A well-formed frontier, even of an outbox not in context, leaves the cursor usable.
      const framed = new Collected(
        rt,
        t.subscribe({ tenant, channel, from: `${all.events[1]!.cursor}~mem1:abcdefab:5` }),
      )
      await waitFor(() => framed.events.length >= 6 || framed.error !== undefined, 10_000, "framed")
      expect(framed.error).toBeUndefined()
      expect(framed.ids).toEqual(want.slice(2))
      for (const c of [all, now, mid, framed]) await c.stop(rt)
    }))
})

describe("consumer groups", () => {
  /** Takes deliveries of a group member one at a time. */
  const member = async (
    rt: Runtime,
    t: Transport["Service"],
    tenant: string,
    channel: string,
    group: string,
  ) => {
    const queue = await rt.runPromise(Queue.unbounded<Delivery>())
    const fiber = rt.runFork(
      t
        .group({ tenant, channel, group, maxInFlight: 1 })
        .pipe(Stream.runForEach((d) => Queue.offer(queue, d))),
    )
    return {
      take: (ms = 10_000) =>
        rt.runPromise(
          Queue.take(queue).pipe(
            Effect.timeoutOrElse({ duration: ms, orElse: () => Effect.die(new Error("no delivery")) }),
          ),
        ),
      size: () => rt.runPromise(Queue.size(queue)),
      stop: () => rt.runPromise(Fiber.interrupt(fiber)),
    }
  }

  it("ack, retry (nak with delay) with growing attempt numbers, and prefetch bounded by maxInFlight", async () =>
    withTransport({ ackWaitMs: 2_000 }, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const events = Array.from({ length: 3 }, (_, i) => envelope(tenant, channel, { i }))
      for (const e of events) await rt.runPromise(t.send(e))
      const m = await member(rt, t, tenant, channel, "g")
      const d1 = await m.take()
      expect(d1.event.id).toBe(events[0]!.id)
      expect(d1.attempt).toBe(1)
      // Held for longer than ack_wait: in-progress acks keep it from being redelivered,
      // and with one slot nothing else is fetched meanwhile.
      await new Promise((r) => setTimeout(r, 4_500))
      expect(await m.size()).toBe(0)
      const started = Date.now()
      await rt.runPromise(d1.retry(300))
      const d1b = await m.take()
      expect(d1b.event.id).toBe(events[0]!.id)
      expect(d1b.attempt).toBe(2)
      expect(Date.now() - started).toBeGreaterThanOrEqual(250)
      await rt.runPromise(d1b.ack)
      const d2 = await m.take()
      expect([d2.event.id, d2.attempt]).toEqual([events[1]!.id, 1])
      await rt.runPromise(d2.ack)
      const d3 = await m.take()
      await rt.runPromise(d3.ack)
      await m.stop()
      const jsm = await jetstreamManager(nc)
      const info = await jsm.consumers.info("BUS", durableName("BUS", `bus.${tenant}.${channel}`, "g"))
      expect(info.num_ack_pending).toBe(0)
      expect(info.num_pending).toBe(0)
    }))

  it("a member that stops hands its unsettled delivery back at once; two members never both get an event", async () =>
    withTransport({ ackWaitMs: 30_000 }, async (rt, t) => {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const events = Array.from({ length: 20 }, (_, i) => envelope(tenant, channel, { i }))
      for (const e of events) await rt.runPromise(t.send(e))
      const a = await member(rt, t, tenant, channel, "g")
      const held = await a.take()
      const b = await member(rt, t, tenant, channel, "g")
      await a.stop()
      // Without the hand-back this would wait for the 30 s ack_wait.
      const again = await b.take(5_000)
      expect(again.event.id).toBe(held.event.id)
      expect(again.attempt).toBe(2)
      await rt.runPromise(again.ack)
      const seen = [again.event.id]
      while (seen.length < events.length) {
        const d = await b.take()
        seen.push(d.event.id)
        await rt.runPromise(d.ack)
      }
      expect(seen).toEqual(events.map((e) => e.id))
      await b.stop()
    }))

  it("dead-letters to <prefix>.dlq.<tenant>.<channel> and the outbox's dead letters, then stops delivering", async () => {
    const outbox = memoryOutbox()
    const bus = await createBus({
      outbox,
      transport: { use: "nats", broker: nats({ servers: server.url }) },
      env: false,
    })
    try {
      const tenant = uniqueName("t")
      const channel = uniqueName("c")
      const attempts: Array<number> = []
      const ok: Array<string> = []
      const consumer = bus.consume(
        { tenant, channel, group: "dl", maxAttempts: 3, initialBackoffMs: 20 },
        (e, attempt) => {
          if (e.type === "poison") {
            attempts.push(attempt)
            throw new Error("poison pill")
          }
          ok.push(e.id)
        },
      )
      const { ids } = await outbox.transaction((tx) =>
        bus.publish(tx, [
          { tenant, channel, type: "poison" },
          { tenant, channel, type: "fine" },
        ]),
      )
      await waitFor(async () => ok.includes(ids[1]!) && (await bus.deadLetters()).length === 1, 15_000)
      expect(attempts).toEqual([1, 2, 3])
      const [letter] = await bus.deadLetters()
      expect(letter).toMatchObject({ source: "dl", attempts: 3, event: { id: ids[0] } })
      expect(letter!.reason).toContain("poison pill")
      const jsm = await jetstreamManager(nc)
      const dlq = await jsm.streams.getMessage("BUS_DLQ", { last_by_subj: `bus.dlq.${tenant}.${channel}` })
      const record = dlq?.json() as { event: Envelope; reason: string; source: string; attempts: number }
      expect(record).toMatchObject({ source: "dl", attempts: 3, event: { id: ids[0] } })
      expect(record.reason).toContain("poison pill")
      await consumer.close()
    } finally {
      await bus.close()
    }
  })
})
