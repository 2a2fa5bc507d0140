import { setTimeout as delay } from "node:timers/promises"
import { type Bus, CursorInvalid, type DeliveredEvent, type MemoryOutbox, memoryOutbox } from "@bus/core"
import { addressTag } from "@bus/core/adapter"
import { type ServerHandle, startRedis } from "@bus/test-infra"
import type { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { channelKeys, toCursor } from "../src/adapter.js"
import type { RedisStreamsOptions } from "../src/index.js"
import {
  type Address,
  captureLogs,
  orderViolations,
  publish,
  Resources,
  Tally,
  txEvents,
  uniqueAddress,
  waitFor,
} from "./support.js"

/**
 * Redis loses data, from outside the SDK: FLUSHALL from another client, and a restart of a
 * server without persistence. Subscribers and consumer groups that were running must get
 * every event once, with nothing done by hand; cursors of the lost stream resume from the
 * outbox (or are refused explicitly), and cursors of another address are refused.
 *
 * Each scenario prints one line: sent / delivered / duplicates per consumer, how long the
 * loss took to be noticed (a reader gave the stream a new identity) and to be recovered
 * from (every consumer has every event).
 */

let server: ServerHandle
beforeAll(async () => {
  server = await startRedis({ appendOnly: false })
})
afterAll(async () => {
  await server?.stop()
})

/** Log lines of the transport, captured from the default logger (console.log). */
const captured = captureLogs("redis-streams:")

const options = (): RedisStreamsOptions => ({ url: server.url, blockMs: 200, claimIdleMs: 2_000 })

/** Time until a reader gave the stream a new identity after the loss (ms), polled every 5 ms. */
const detection = async (redis: Redis, key: string, lost: string, since: number): Promise<number> => {
  for (;;) {
    const identity = await redis.get(key).catch(() => null)
    if (identity !== null && identity !== lost) return Math.round(performance.now() - since)
    if (performance.now() - since > 60_000) throw new Error("the loss was never noticed")
    await delay(5)
  }
}

/** Publishes `txs` transactions of `per` events in the background, a few ms apart; returns the ids as they commit. */
const publishing = (bus: Bus, outbox: MemoryOutbox, a: Address, label: string, txs: number, per: number) => {
  const ids: Array<string> = []
  const done = (async () => {
    for (let tx = 0; tx < txs; tx++) {
      ids.push(...(await publish(bus, outbox, txEvents(a, `${label}${tx}`, per))))
      await delay(3)
    }
  })()
  return { ids, done }
}

interface Scenario {
  readonly name: string
  /** Makes Redis lose everything; resolves when Redis answers again. */
  readonly lose: (admin: Redis) => Promise<void>
}

const scenarios: ReadonlyArray<Scenario> = [
  { name: "FLUSHALL from another client", lose: async (admin) => void (await admin.flushall()) },
  {
    name: "restart without persistence",
    lose: async (admin) => {
      await server.kill()
      await server.restart()
      await waitFor(async () => (await admin.ping().catch(() => "")) === "PONG", 30_000, "Redis back")
    },
  },
]

describe("Redis loses its data while consumers run", () => {
  for (const scenario of scenarios) {
    it(`${scenario.name}: detected and recovered from the outbox, nothing lost, no duplicate`, async () => {
      const r = new Resources()
      try {
        const outbox = memoryOutbox()
        const bus = await r.bus(outbox, options())
        const admin = r.redis(server.url)
        const a = uniqueAddress()
        const keys = channelKeys("bus", a)
        // A slow group: at the loss most of the backlog is still unread or pending in Redis.
        const handled = new Tally()
        r.defer(
          bus.consume({ ...a, group: "slow" }, async (e: DeliveredEvent) => {
            await delay(4)
            handled.add(e)
          }).close,
        )
        const fast = new Tally()
        r.defer(bus.consume({ ...a, group: "fast" }, (e: DeliveredEvent) => fast.add(e)).close)
        const sub = r.collect(bus, a, "beginning")

        const before = publishing(bus, outbox, a, "before", 40, 10)
        await before.done
        // The members sample their group's floor every claimIdleMs / 2 (1 s here).
        await waitFor(() => handled.distinct >= 60 && sub.hasAll(before.ids), 30_000, "the backlog to start")
        await delay(1_200)
        const lostIdentity = (await admin.get(keys.identity)) ?? ""
        expect(lostIdentity).toMatch(/^[0-9a-f]{12}$/)
        const handledAtLoss = handled.distinct

        const t0 = performance.now()
        await scenario.lose(admin)
        const after = publishing(bus, outbox, a, "after", 20, 5)
        const detectedMs = await detection(admin, keys.identity, lostIdentity, t0)
        await after.done
        const publishedMs = Math.round(performance.now() - t0)
        const sent = [...before.ids, ...after.ids]
        // The subscriber is bound by the recovery; the groups by their handlers (an inbox
        // look-up for each re-sent event; the slow one 4 ms an event on top).
        await waitFor(() => sub.hasAll(sent), 60_000, "the subscriber")
        const subMs = Math.round(performance.now() - t0)
        await waitFor(() => fast.hasAll(sent), 60_000, "the fast group")
        const fastMs = Math.round(performance.now() - t0)
        await waitFor(
          () => handled.hasAll(sent) && fast.hasAll(sent) && sub.hasAll(sent),
          60_000,
          () =>
            `every consumer to have everything (slow group missing ${handled.missing(sent).length}, fast ${fast.missing(sent).length}, subscriber ${sub.missing(sent).length})`,
        )
        const recoveredMs = Math.round(performance.now() - t0)
        // A moment for late duplicates to show up.
        await delay(500)
        const line = (name: string, t: Tally) =>
          `${name} delivered=${sent.filter((id) => t.has(id)).length} duplicates=${t.duplicates.length}`
        console.info(
          `data loss "${scenario.name}": sent=${sent.length} (${sent.length - handledAtLoss} not yet handled by the slow group at the loss) | ${line("slow group", handled)} | ${line("fast group", fast)} | ${line("subscriber", sub)} | detected in ${detectedMs} ms; last event published after ${publishedMs} ms; complete: subscriber after ${subMs} ms, fast group after ${fastMs} ms, slow group after ${recoveredMs} ms`,
        )
        for (const t of [handled, fast, sub]) {
          expect(sent.filter((id) => t.has(id))).toHaveLength(sent.length)
          expect(t.duplicates).toEqual([])
        }
        expect(sub.error).toBeUndefined()
        // Per transaction, the subscriber sees events in order.
        expect(orderViolations(sub.events)).toEqual([])
        // The log says what was lost and what was re-sent.
        expect(captured.lines.some((l) => l.includes(`stream ${keys.stream} lost its data`))).toBe(true)
        expect(
          captured.lines.some((l) =>
            /group slow of .* recovered: \d+ event\(s\) re-sent from the outbox/.test(l),
          ),
        ).toBe(true)
      } finally {
        await r.close()
      }
    })
  }
})

describe("a stream or a group deleted by hand", () => {
  it("DEL of the stream (identity key kept): noticed by the feed and the group, recovered; XGROUP DESTROY: re-read, no handler runs twice", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const bus = await r.bus(outbox, options())
      const admin = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const handled = new Tally()
      r.defer(bus.consume({ ...a, group: "g" }, (e: DeliveredEvent) => handled.add(e)).close)
      const sub = r.collect(bus, a, "beginning")
      const first: Array<string> = []
      for (let tx = 0; tx < 5; tx++) first.push(...(await publish(bus, outbox, txEvents(a, `a${tx}`, 10))))
      await waitFor(() => handled.hasAll(first) && sub.hasAll(first), 30_000, "the first events")
      const identity = (await admin.get(keys.identity)) ?? ""

      // An operator deletes the stream; nothing is published for a while.
      await admin.del(keys.stream)
      const t0 = performance.now()
      const detectedMs = await detection(admin, keys.identity, identity, t0)
      const second: Array<string> = []
      for (let tx = 0; tx < 5; tx++) second.push(...(await publish(bus, outbox, txEvents(a, `b${tx}`, 10))))
      const sent = [...first, ...second]
      await waitFor(() => handled.hasAll(sent) && sub.hasAll(sent), 30_000, "everything after the DEL")
      expect(
        captured.lines.some(
          (l) => l.includes("the stream was deleted") || l.includes(`stream ${keys.stream} lost its data`),
        ),
      ).toBe(true)

      // The group alone is destroyed: it is re-created at the start of the stream and reads it
      // again; its inbox skips every event it handled.
      await admin.xgroup("DESTROY", keys.stream, "g")
      const third = await publish(bus, outbox, txEvents(a, "c", 10))
      const all = [...sent, ...third]
      await waitFor(() => handled.hasAll(all) && sub.hasAll(all), 30_000, "everything after XGROUP DESTROY")
      await waitFor(
        () =>
          captured.lines.some(
            (l) => l.includes("group g of") && l.includes("was deleted while its stream stayed"),
          ),
        10_000,
        "the log line of the deleted group",
      )
      await delay(500)
      console.info(
        `stream DEL + XGROUP DESTROY: sent=${all.length} group delivered=${all.filter((id) => handled.has(id)).length} duplicates=${handled.duplicates.length} | subscriber delivered=${all.filter((id) => sub.has(id)).length} duplicates=${sub.duplicates.length} | DEL noticed in ${detectedMs} ms`,
      )
      expect(handled.duplicates).toEqual([])
      expect(sub.duplicates).toEqual([])
      expect(sub.error).toBeUndefined()
    } finally {
      await r.close()
    }
  })
})

describe("cursors after a loss, and cursors of another address", () => {
  const refusal = async (bus: Bus, a: Address, from: string) => {
    const sub = bus.subscribe({ ...a, from })
    const refused = await sub.ready.then(
      () => undefined,
      (x: unknown) => x,
    )
    const fromIterator = await (async () => {
      for await (const _ of sub) return "delivered"
      return "ended"
    })().catch((x: unknown) => x)
    await sub.close()
    return { refused, fromIterator }
  }

  it("a cursor of a lost stream resumes from the outbox with its frontier, and is refused without one", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const bus = await r.bus(outbox, options())
      const admin = r.redis(server.url)
      const a = uniqueAddress()
      const keys = channelKeys("bus", a)
      const sub = r.collect(bus, a, "beginning")
      const ids: Array<string> = []
      for (let tx = 0; tx < 5; tx++) ids.push(...(await publish(bus, outbox, txEvents(a, `a${tx}`, 10))))
      await waitFor(() => sub.hasAll(ids), 30_000, "the first events")
      // A browser stored the cursor of event 20, then Redis lost everything.
      const stored = sub.events[19]!
      expect(stored.cursor).toMatch(/^redis2:[0-9a-f]{8}\.[0-9a-f]{12}:\d+-\d+~@[0-9a-f]{8}:mem1:/)
      const lostIdentity = (await admin.get(keys.identity)) ?? ""
      await admin.flushall()
      const later: Array<string> = []
      for (let tx = 0; tx < 3; tx++) later.push(...(await publish(bus, outbox, txEvents(a, `b${tx}`, 10))))
      await waitFor(() => sub.hasAll(later), 30_000, "the live subscriber after the loss")

      // Resuming from the stored cursor: exactly the events after it, from the outbox and the new stream.
      const resumed = new Tally()
      const again = bus.subscribe({ ...a, from: stored.cursor })
      expect(await again.ready).toBe(stored.cursor)
      const expected = [...ids.slice(20), ...later]
      const reading = (async () => {
        for await (const e of again) {
          resumed.add(e)
          if (resumed.hasAll(expected)) break
        }
      })()
      await waitFor(() => resumed.hasAll(expected), 30_000, "the resumed subscription")
      await reading
      await again.close()
      expect(resumed.duplicates).toEqual([])
      expect(resumed.events.map((e) => e.id)).toEqual(expected)
      console.info(
        `stale cursor after FLUSHALL: resumed=${resumed.events.length} of ${expected.length} expected, duplicates=${resumed.duplicates.length}`,
      )

      // Without an outbox frontier nothing can say what was lost: an explicit refusal.
      const bare = toCursor(stored.cursor.split(":")[2]!.split("~")[0]!, {
        tag: addressTag(a),
        identity: lostIdentity,
      })
      const { refused, fromIterator } = await refusal(bus, a, bare)
      expect(refused).toBeInstanceOf(CursorInvalid)
      expect(refused).toMatchObject({ reason: "expired" })
      expect((refused as CursorInvalid).message).toContain("lost")
      expect(fromIterator).toBe(refused)
    } finally {
      await r.close()
    }
  })

  it("a cursor of another tenant or channel is refused (reason address); a legacy redis1 cursor is accepted unchecked", async () => {
    const r = new Resources()
    try {
      const outbox = memoryOutbox()
      const bus = await r.bus(outbox, options())
      const a = uniqueAddress()
      const b = { tenant: a.tenant, channel: `${a.channel}x` }
      const c = { tenant: `${a.tenant}x`, channel: a.channel }
      const sub = r.collect(bus, a, "beginning")
      const ids = await publish(bus, outbox, txEvents(a, "t", 5))
      await waitFor(() => sub.hasAll(ids), 30_000, "the events of a")
      const cursor = sub.events[1]!.cursor
      for (const other of [b, c]) {
        const { refused, fromIterator } = await refusal(bus, other, cursor)
        expect(refused).toBeInstanceOf(CursorInvalid)
        expect(refused).toMatchObject({ reason: "address" })
        expect(fromIterator).toBe(refused)
      }
      // The same cursor on its own address resumes after it.
      const own = bus.subscribe({ ...a, from: cursor })
      expect(await own.ready).toBe(cursor)
      const resumed: Array<string> = []
      for await (const e of own) {
        resumed.push(e.id)
        if (resumed.length === 3) break
      }
      expect(resumed).toEqual(ids.slice(2))
      // A cursor of the previous version carries neither address nor identity: accepted as before.
      const legacy = `redis1:${cursor.split(":")[2]!.split("~")[0]}`
      const old = bus.subscribe({ ...a, from: legacy })
      expect(await old.ready).toBe(legacy)
      const fromLegacy: Array<string> = []
      for await (const e of old) {
        fromLegacy.push(e.id)
        if (fromLegacy.length === 3) break
      }
      expect(fromLegacy).toEqual(ids.slice(2))
    } finally {
      await r.close()
    }
  })
})
