import type { DeliveredEvent, EventInput } from "@bus/core"
import { describe, expect, it } from "vitest"
import {
  type Address,
  type Collector,
  deferred,
  duplicateIds,
  event,
  holdsWithin,
  orderViolations,
  payload,
  rejectionOf,
  settle,
  Tally,
  tagOf,
  txEvents,
  uniqueAddress,
  uniqueName,
  waitFor,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** Thrown inside a transaction to make the target roll it back. */
class Rollback extends Error {}

const idsOf = (c: { readonly events: ReadonlyArray<DeliveredEvent> }) => c.events.map((e) => e.id)

/** Same events; in the same order when the transport orders across transactions of a channel. */
const expectEvents = (
  got: ReadonlyArray<string>,
  want: ReadonlyArray<string>,
  ordered: boolean,
  label: string,
) => {
  if (ordered) expect(got, label).toEqual(want)
  else expect([...got].sort(), label).toEqual([...want].sort())
}

/** Invariants 1, 2, 3 and 4: no loss, no uncommitted reads, out-of-order commits, dedupe, order, resume. */
export function deliveryTests(ctx: SuiteContext): void {
  const { target } = ctx
  const timeout = ctx.deliveryTimeoutMs

  describe.concurrent("delivery", () => {
    it("1. no loss + order: every committed event of several transactions arrives once, per-transaction order kept", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const a = uniqueAddress()
        const b: Address = { tenant: a.tenant, channel: uniqueName("c") }
        const subA = await s.live(bus, a)
        const subB = await s.live(bus, b)
        const expected = new Map<string, EventInput>()
        const record = (inputs: ReadonlyArray<EventInput>, ids: ReadonlyArray<string>) => {
          expect(ids).toHaveLength(inputs.length)
          for (const [i, input] of inputs.entries()) expected.set(ids[i]!, input)
        }

        // A single event (not an array), with trace headers and nested JSON.
        const headers = {
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
          tracestate: "vendor=opaque,other=1",
          "x-note": "ünïcödé ✓",
        }
        const single = event(
          a,
          "conformance.single",
          {
            tx: "tx0",
            seq: 0,
            nested: { list: [1, "two", null, true, 3.5, { deep: [] }], empty: {} },
            s: 'a"b\\c\n',
          },
          { headers },
        )
        const r0 = await s.publish(bus, single)
        record([single], r0.ids)

        // Transactions of growing size, interleaving two channels of one tenant.
        for (let t = 1; t <= 5; t++) {
          const inputs = Array.from({ length: 5 * t }, (_, seq) =>
            event(seq % 3 === 2 ? b : a, "conformance.step", { tx: `tx${t}`, seq }),
          )
          record(inputs, (await s.publish(bus, inputs)).ids)
        }

        // Two publish calls inside one transaction keep their order too.
        await target.transaction(async (tx) => {
          const first = txEvents(a, "tx6", 3)
          record(first, (await bus.publish(tx, first)).ids)
          const second = [3, 4, 5].map((seq) => event(a, "conformance.step", { tx: "tx6", seq }))
          record(second, (await bus.publish(tx, second)).ids)
        })
        expect(new Set(expected.keys()).size).toBe(expected.size)

        const idsFor = (addr: Address) =>
          [...expected].filter(([, e]) => e.channel === addr.channel).map(([id]) => id)
        await waitFor(
          () => subA.hasAll(idsFor(a)) && subB.hasAll(idsFor(b)),
          timeout,
          () =>
            `all events (a missing ${subA.missing(idsFor(a)).length}, b missing ${subB.missing(idsFor(b)).length})`,
        )
        const sentinels = await settle(s, bus, [subA, subB])

        for (const [sub, addr] of [
          [subA, a],
          [subB, b],
        ] as const) {
          const got = payload(sub, sentinels)
          expect(duplicateIds(got), "duplicates").toEqual([])
          expect(new Set(got.map((e) => e.id)), "exactly the committed events").toEqual(new Set(idsFor(addr)))
          expect(orderViolations(got), "per-transaction order").toEqual([])
          if (bus.capabilities.ordering === "per-channel") {
            expect(
              got.map((e) => e.id),
              "per-channel order",
            ).toEqual(idsFor(addr))
          }
          for (const e of got) {
            const input = expected.get(e.id)!
            expect({
              tenant: e.tenant,
              channel: e.channel,
              type: e.type,
              data: e.data,
              headers: e.headers,
            }).toEqual({
              tenant: input.tenant,
              channel: input.channel,
              type: input.type,
              data: input.data,
              headers: input.headers ?? {},
            })
            expect(typeof e.cursor === "string" && e.cursor.length > 0, "a cursor on every event").toBe(true)
            expect(Number.isNaN(Date.parse(e.time)), "time is a date").toBe(false)
          }
        }
      }))

    it("2. nothing uncommitted is seen: rolled-back and still-open transactions never reach a subscriber", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const a = uniqueAddress()
        const other: Address = { tenant: a.tenant, channel: uniqueName("c") }
        const sub = await s.live(bus, a)
        const subOther = await s.live(bus, other)
        const neverSeen: Array<string> = []

        const kept1 = (await s.publish(bus, event(a, "kept", { n: 1 }))).ids[0]!
        const rollbackError = await rejectionOf(() =>
          target.transaction(async (tx) => {
            neverSeen.push(...(await bus.publish(tx, event(a, "rolled-back", { n: 2 }))).ids)
            throw new Rollback("roll back")
          }),
        )
        expect(rollbackError, "the target rethrows the rollback cause").toBeInstanceOf(Rollback)
        const kept3 = (await s.publish(bus, event(a, "kept", { n: 3 }))).ids[0]!

        // A transaction held open on another channel while commits continue.
        const published = deferred()
        const gate = deferred()
        const open = target.transaction(async (tx) => {
          neverSeen.push(...(await bus.publish(tx, txEvents(other, "open", 3, "rolled-back"))).ids)
          published.resolve()
          await gate.promise
          throw new Rollback("roll back the held transaction")
        })
        const openSettled = open.then(
          () => undefined,
          (e: unknown) => e,
        )
        s.defer(async () => {
          gate.resolve()
          await openSettled
        })
        await published.promise
        const kept5 = (await s.publish(bus, event(a, "kept", { n: 5 }))).ids[0]!
        await waitFor(
          () => sub.has(kept5),
          timeout,
          "an event committed while an unrelated transaction stays open",
        )
        expect(subOther.events, "nothing of the open transaction").toEqual([])
        gate.resolve()
        expect(await openSettled).toBeInstanceOf(Rollback)
        const kept6 = (await s.publish(bus, event(other, "kept", { n: 6 }))).ids[0]!

        await waitFor(
          () => sub.hasAll([kept1, kept3, kept5]) && subOther.has(kept6),
          timeout,
          "the committed events",
        )
        const sentinels = await settle(s, bus, [sub, subOther])
        const seen = [...payload(sub, sentinels), ...payload(subOther, sentinels)].map((e) => e.id)
        expect(
          seen.filter((id) => neverSeen.includes(id)),
          "rolled-back events delivered",
        ).toEqual([])
        const perChannel = bus.capabilities.ordering === "per-channel"
        expectEvents(
          idsOf({ events: payload(sub, sentinels) }),
          [kept1, kept3, kept5],
          perChannel,
          "committed events",
        )
        expect(idsOf({ events: payload(subOther, sentinels) })).toEqual([kept6])
      }))

    it("3'. out-of-order commits lose nothing: a transaction that appended first but commits last is still delivered, also after resuming", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const a = uniqueAddress()
        const sub = await s.live(bus, a)
        const groups = bus.capabilities.consumerGroups
        const handled = new Tally()
        if (groups) s.consume(bus, { ...a, group: uniqueName("g") }, (e) => handled.add(e))

        // A appends first (takes the lower sequence number) and stays open; B commits first.
        const appended = deferred()
        const gate = deferred()
        let idA = ""
        const txA = target.transaction(async (tx) => {
          idA = (await bus.publish(tx, event(a, "committed-last", { order: "A" }))).ids[0]!
          appended.resolve()
          await gate.promise
        })
        s.defer(async () => {
          gate.resolve()
          await txA.catch(() => {})
        })
        await appended.promise
        const idB = (await s.publish(bus, event(a, "committed-first", { order: "B" }))).ids[0]!
        // Transports may deliver B at once or hold it until A ends; both are allowed.
        const bBeforeA = await holdsWithin(
          () => sub.has(idB) && (!groups || handled.has(idB)),
          Math.min(2_000, timeout),
        )
        const cursorB = bBeforeA ? sub.events.find((e) => e.id === idB)!.cursor : undefined
        gate.resolve()
        await txA

        await waitFor(
          () => sub.hasAll([idA, idB]) && (!groups || handled.hasAll([idA, idB])),
          timeout,
          () =>
            `both events (subscriber missing ${sub.missing([idA, idB])}, handler missing ${handled.missing([idA, idB])})`,
        )
        if (groups) expect(handled.duplicates, "handler duplicates").toEqual([])

        if (!bus.capabilities.replay) return
        // A reader that resumes from the cursor of whichever event it saw first must still get the other.
        const first = sub.events.find((e) => e.id === idA || e.id === idB)!
        const resumeCursor = cursorB ?? first.cursor
        const expectedRest = cursorB !== undefined || first.id === idB ? idA : idB
        const resumed = s.subscribe(bus, a, resumeCursor)
        await waitFor(
          () => resumed.has(expectedRest),
          timeout,
          `the out-of-order event after resuming from ${bBeforeA ? "B's cursor (taken before A committed)" : "the first event's cursor"}`,
        )
        const sentinels = await settle(s, bus, [sub, resumed])
        expect(idsOf({ events: payload(resumed, sentinels) }), "exactly the event after the cursor").toEqual([
          expectedRest,
        ])
      }))

    it("3. at-least-once with dedupe: consumer groups see each event exactly once in the normal path", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        skip(!bus.capabilities.consumerGroups, "the transport has no consumer groups")
        const a = uniqueAddress()
        const g1 = new Tally()
        const g2 = new Tally()
        s.consume(bus, { ...a, group: uniqueName("g") }, (e) => g1.add(e))
        s.consume(bus, { ...a, group: uniqueName("g") }, async (e) => {
          await Promise.resolve()
          g2.add(e)
        })
        const sub = await s.live(bus, a)
        const ids: Array<string> = []
        for (let t = 0; t < 6; t++) ids.push(...(await s.publish(bus, txEvents(a, `tx${t}`, 10))).ids)
        await waitFor(
          () => g1.hasAll(ids) && g2.hasAll(ids) && sub.hasAll(ids),
          timeout,
          () =>
            `all ${ids.length} events (group1 ${g1.distinct}, group2 ${g2.distinct}, subscriber ${sub.distinct})`,
        )
        const sentinels = await settle(s, bus, [sub])
        await waitFor(
          () => g1.hasAll(sentinels) && g2.hasAll(sentinels),
          timeout,
          "the sentinel at both groups",
        )
        for (const [name, tally] of [
          ["group 1", g1],
          ["group 2", g2],
          ["subscriber", sub],
        ] as const) {
          expect(tally.duplicates, `${name} duplicates`).toEqual([])
          expect(tally.distinct, `${name} distinct events`).toBe(ids.length + 1)
          expect(orderViolations(tally.events), `${name} per-transaction order`).toEqual([])
        }
      }))

    it("4. resume from cursor: the rest after a cursor exactly, from 'beginning' everything, garbage cursors refused", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        skip(!bus.capabilities.replay, "the transport does not replay")
        const a = uniqueAddress()
        const ids = [
          ...(await s.publish(bus, txEvents(a, "tx1", 5))).ids,
          ...(await s.publish(bus, txEvents(a, "tx2", 5))).ids,
        ]

        // Read half, then leave the loop: `break` closes the subscription.
        const first = bus.subscribe({ ...a, from: "beginning" })
        const firstHalf: Array<DeliveredEvent> = []
        try {
          for await (const e of first) {
            firstHalf.push(e)
            if (firstHalf.length === 5) break
          }
        } finally {
          await first.close()
        }
        expect(firstHalf.map((e) => e.id)).toEqual(ids.slice(0, 5))
        const cursor = first.cursor
        expect(cursor, "subscription.cursor is the last yielded event's cursor").toBe(firstHalf[4]!.cursor)

        const later = (await s.publish(bus, txEvents(a, "tx3", 3))).ids
        const rest = s.subscribe(bus, a, cursor!)
        // A cursor in the middle of a transaction resumes inside it.
        const mid = s.subscribe(bus, a, firstHalf[2]!.cursor)
        const all = s.subscribe(bus, a, "beginning")
        await waitFor(
          () =>
            rest.hasAll([...ids.slice(5), ...later]) &&
            mid.hasAll(ids.slice(3)) &&
            all.hasAll([...ids, ...later]),
          timeout,
          "the resumed subscriptions",
        )
        const sentinels = await settle(s, bus, [rest, mid, all])
        const perChannel = bus.capabilities.ordering === "per-channel"
        const got = (c: Collector) => idsOf({ events: payload(c, sentinels) })
        expectEvents(got(rest), [...ids.slice(5), ...later], perChannel, "after the cursor: exactly the rest")
        expectEvents(got(mid), [...ids.slice(3), ...later], perChannel, "after a mid-transaction cursor")
        expectEvents(got(all), [...ids, ...later], perChannel, "from the beginning: everything")
        for (const c of [rest, mid, all]) expect(orderViolations(c.events)).toEqual([])

        // Garbage cursors are refused with a typed error, not read as "beginning" or "now".
        for (const garbage of ["not-a-cursor", `${cursor}x`, "mem1:zzzzzzzz:1", "pg1:", "0"]) {
          const bad = s.subscribe(bus, a, garbage)
          await waitFor(
            () => bad.ended || bad.events.length > 0,
            timeout,
            `the subscription from ${garbage} to fail`,
          )
          expect(tagOf(bad.error), `cursor ${JSON.stringify(garbage)}`).toBe("CursorInvalid")
          expect(bad.events).toEqual([])
        }
      }))

    it("4'. from 'now': nothing committed before subscribe(), everything committed after `ready`", async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const a = uniqueAddress()
        const before = (await s.publish(bus, txEvents(a, "before", 3))).ids
        const sub = s.subscribe(bus, a, "now")
        // `ready` resolves once "now" is fixed to a cursor: an event committed after it
        // must arrive, even if the stream has not read anything yet.
        const start = await sub.subscription.ready
        expect(typeof start).toBe("string")
        const after = (await s.publish(bus, txEvents(a, "after", 3))).ids
        await waitFor(() => sub.hasAll(after), timeout, "the events committed after subscribe() returned")
        const sentinels = await settle(s, bus, [sub])
        expect(idsOf({ events: payload(sub, sentinels) })).toEqual(after)
        expect(before.filter((id) => sub.has(id))).toEqual([])
      }))
  })
}
