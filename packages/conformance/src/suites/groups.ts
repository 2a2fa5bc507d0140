import { performance } from "node:perf_hooks"
import type { Bus, DeliveredEvent } from "@bus/core"
import type { DeadLetter } from "@bus/core/adapter"
import { describe, expect, it } from "vitest"
import {
  event,
  orderViolations,
  rejectionOf,
  Tally,
  txEvents,
  uniqueAddress,
  uniqueName,
  waitFor,
  within,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** Consumer groups: retries with backoff, dead letters, exclusive handling, resume after restart. */
export function groupTests(ctx: SuiteContext): void {
  const timeout = ctx.deliveryTimeoutMs

  describe.concurrent("consumer groups", () => {
    it("10a. a failing event is retried with backoff, then dead-lettered after maxAttempts; the others keep flowing", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        skip(!bus.capabilities.consumerGroups, "the transport has no consumer groups")
        const a = uniqueAddress()
        const group = uniqueName("g")
        const maxAttempts = 3
        const initialBackoffMs = 60
        const ok = new Tally()
        const attempts: Array<{ readonly attempt: number; readonly at: number }> = []
        let poisonId = ""
        s.consume(bus, { ...a, group, maxAttempts, initialBackoffMs, maxBackoffMs: 5_000 }, (e, attempt) => {
          if (e.type === "poison") {
            attempts.push({ attempt, at: performance.now() })
            throw new Error("poison pill: this handler always fails")
          }
          ok.add(e)
        })
        const first = await s.publish(bus, [
          event(a, "fine", { n: 0 }),
          event(a, "poison", { n: 1 }),
          event(a, "fine", { n: 2 }),
          event(a, "fine", { n: 3 }),
        ])
        poisonId = first.ids[1]!
        const second = await s.publish(bus, txEvents(a, "after", 3, "fine"))
        const fine = [first.ids[0]!, first.ids[2]!, first.ids[3]!, ...second.ids]

        let letter: DeadLetter | undefined
        await waitFor(
          async () => {
            letter = (await bus.deadLetters(1_000)).find((l) => l.event.id === poisonId)
            return letter !== undefined && ok.hasAll(fine)
          },
          timeout + 2_000,
          () =>
            `the dead letter and the other events (attempts ${attempts.length}, fine ${ok.distinct}/${fine.length})`,
        )
        expect(
          attempts.map((x) => x.attempt),
          "attempt numbers",
        ).toEqual([1, 2, 3])
        const gaps = attempts.slice(1).map((x, i) => x.at - attempts[i]!.at)
        // backoff: initial, then doubled (a little slack for timer granularity)
        expect(gaps[0], "first retry waits the initial backoff").toBeGreaterThanOrEqual(
          initialBackoffMs * 0.9,
        )
        expect(gaps[1], "second retry waits longer").toBeGreaterThanOrEqual(initialBackoffMs * 2 * 0.9)
        expect(letter!.source, "dead letter names the group").toBe(group)
        expect(letter!.attempts).toBe(maxAttempts)
        expect(letter!.reason).toContain("poison pill")
        expect(letter!.event.type).toBe("poison")
        expect(ok.duplicates, "fine events handled once").toEqual([])

        // Once parked, the event is not delivered again.
        const sentinel = (await s.publish(bus, event(a, "fine", { sentinel: true }))).ids[0]!
        await waitFor(() => ok.has(sentinel), timeout, "the sentinel")
        expect(attempts).toHaveLength(maxAttempts)
        const letters = (await bus.deadLetters(1_000)).filter((l) => l.event.id === poisonId)
        expect(letters, "dead-lettered once").toHaveLength(1)
      }))

    it("10b. two members of one group never both handle an event; a member stops promptly; the survivor takes over", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        // Separate buses: separate processes sharing one group.
        const bus1 = await s.bus()
        const bus2 = await s.bus()
        skip(!bus1.capabilities.consumerGroups, "the transport has no consumer groups")
        const a = uniqueAddress()
        const group = uniqueName("g")
        const byMember = { one: new Tally(), two: new Tally(), three: new Tally() }
        const handledBy = new Map<string, Array<string>>()
        const handler = (member: keyof typeof byMember) => (e: DeliveredEvent) => {
          byMember[member].add(e)
          handledBy.set(e.id, [...(handledBy.get(e.id) ?? []), member])
        }
        const members = {
          one: s.consume(bus1, { ...a, group }, handler("one")),
          two: s.consume(bus2, { ...a, group }, handler("two")),
        }
        const twice = () => [...handledBy].filter(([, m]) => m.length > 1)
        const publishBatch = async (prefix: string, txs: number, size: number) => {
          const ids: Array<string> = []
          for (let t = 0; t < txs; t++)
            ids.push(...(await s.publish(bus1, txEvents(a, `${prefix}${t}`, size))).ids)
          await waitFor(
            () => ids.every((id) => handledBy.has(id)),
            timeout,
            () =>
              `every event of ${prefix} handled (${ids.filter((id) => handledBy.has(id)).length}/${ids.length})`,
          )
          expect(twice(), "events handled more than once").toEqual([])
          return ids
        }
        await publishBatch("one", 10, 20)

        // A third member joins (it shares the work, or waits for its turn), then leaves:
        // its close() must not wait for the other members.
        const bus3 = await s.bus()
        const three = s.consume(bus3, { ...a, group }, handler("three"))
        await publishBatch("three", 2, 10)
        await within(
          three.close(),
          ctx.closeTimeoutMs,
          "close() of a group member while other members hold the group",
        )
        await publishBatch("after-three", 2, 10)
        const threeStoppedAt = byMember.three.distinct
        const firstBatches = `${byMember.one.distinct}/${byMember.two.distinct}/${threeStoppedAt}`

        // Stop the member that did the work (either, if they shared it).
        const busier = byMember.one.distinct >= byMember.two.distinct ? "one" : "two"
        const survivor = busier === "one" ? "two" : "one"
        await members[busier].close()
        const stoppedAt = byMember[busier].distinct
        const batch2: Array<string> = []
        for (let t = 0; t < 5; t++) batch2.push(...(await s.publish(bus1, txEvents(a, `two${t}`, 10))).ids)
        await waitFor(
          () => byMember[survivor].hasAll(batch2),
          timeout,
          () => `the surviving member to take over (${byMember[survivor].missing(batch2).length} missing)`,
        )
        expect(byMember[busier].distinct, "a stopped member handles nothing more").toBe(stoppedAt)
        expect(byMember.three.distinct, "a stopped member handles nothing more").toBe(threeStoppedAt)
        expect(twice(), "events handled more than once").toEqual([])
        console.log(
          `conformance[${ctx.target.name}] group members: before the takeover handled ${firstBatches} (one/two/three); member ${busier} stopped, ${survivor} took over ${batch2.length} events`,
        )
      }))

    it('10d. a group across tenants (tenant "*"): every tenant\'s events once, in order per address, shared by the members, through a member joining and one leaving, a new tenant picked up', async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus1 = await s.bus()
        const bus2 = await s.bus()
        skip(!bus1.capabilities.consumerGroups, "the transport has no consumer groups")
        const channel = uniqueName("c")
        const group = uniqueName("g")
        // 16 tenants, so that rendezvous hashing leaves no member without a tenant (the odds
        // that one of three members gets none are (2/3)^16, about 0.15%).
        const tenants = Array.from({ length: 16 }, () => uniqueName("t"))
        const late = uniqueName("t")
        const request = { tenant: "*", channel, group, memberLeaseMs: 2_000, discoverIntervalMs: 300 }
        const all = new Tally()
        const tenantsOf = { one: new Set<string>(), two: new Set<string>(), three: new Set<string>() }
        const counts = { one: 0, two: 0, three: 0 }
        // Who handled what, when: printed for an address whose order broke.
        const trace: Array<{ member: string; tenant: string; seq: number | undefined; at: number }> = []
        const strangers: Array<string> = []
        const handler = (member: keyof typeof tenantsOf) => (e: DeliveredEvent) => {
          counts[member]++
          trace.push({
            member,
            tenant: e.tenant,
            seq: (e.data as { seq?: number } | null)?.seq,
            at: Date.now(),
          })
          if (e.channel !== channel || (!tenants.includes(e.tenant) && e.tenant !== late))
            strangers.push(`${e.tenant}/${e.channel}`)
          all.add(e)
          tenantsOf[member].add(e.tenant)
        }
        // Per tenant one running sequence across transactions: {tx: "address", seq} checks
        // the order of each whole address, not only within a transaction.
        const nextSeq = new Map<string, number>()
        const round = async (bus: Bus, of: ReadonlyArray<string>, perTenant: number) => {
          const ids: Array<string> = []
          for (const tenant of of) {
            const start = nextSeq.get(tenant) ?? 0
            nextSeq.set(tenant, start + perTenant)
            const events = Array.from({ length: perTenant }, (_, i) =>
              event({ tenant, channel }, "conformance.wild", { tx: "address", seq: start + i }),
            )
            ids.push(...(await s.publish(bus, events)).ids)
          }
          return ids
        }
        const handledAll = (ids: ReadonlyArray<string>, what: string) =>
          waitFor(
            () => all.hasAll(ids),
            timeout * 2,
            () => `${what}: ${all.missing(ids).length} of ${ids.length} not handled`,
          )

        /** Publishes rounds while events flow until `done` holds (members see each other within a tick or two). */
        const roundsUntil = async (bus: Bus, done: () => boolean, what: string) => {
          const ids: Array<string> = []
          await waitFor(
            async () => {
              const batch = await round(bus, tenants, 2)
              ids.push(...batch)
              await handledAll(batch, what)
              return done()
            },
            timeout * 2,
            what,
          )
          return ids
        }

        // Tenants with events before the members start are found at start. The member that
        // starts first may run them all until it sees the second one.
        const first = await round(bus1, tenants, 3)
        const one = s.consume(bus1, request, handler("one"))
        s.consume(bus2, request, handler("two"))
        await handledAll(first, "the events published before the members started")
        const second = await roundsUntil(
          bus1,
          () => tenantsOf.one.size > 0 && tenantsOf.two.size > 0,
          "both members running some tenants",
        )

        // A third member joins while events flow: it takes its share.
        const bus3 = await s.bus()
        s.consume(bus3, request, handler("three"))
        const third = await roundsUntil(
          bus2,
          () => tenantsOf.three.size > 0,
          "the member that joined taking tenants over",
        )

        // Member one leaves mid-run: the others take its tenants over.
        const fourth: Array<string> = []
        const publishing = (async () => {
          for (let r = 0; r < 3; r++) fourth.push(...(await round(bus2, tenants, 2)))
        })()
        await within(one.close(), ctx.closeTimeoutMs, "close() of a member of a group across tenants")
        const oneStoppedAt = counts.one
        await publishing
        await handledAll(fourth, "after a member left")

        // A tenant that publishes on the channel for the first time is picked up.
        const fifth = [...(await round(bus2, [late], 3)), ...(await round(bus2, tenants.slice(0, 4), 1))]
        await handledAll(fifth, "a new tenant")

        const published = [...first, ...second, ...third, ...fourth, ...fifth]
        expect(strangers, "events of other addresses").toEqual([])
        expect(all.duplicates, "events handled more than once").toEqual([])
        const violations = orderViolations(all.events)
        const broken = new Set(violations.map((v) => v.split("/")[0]))
        const t0 = trace[0]?.at ?? 0
        expect(
          violations,
          `per-address order; handled (member seq +ms): ${trace
            .filter((t) => broken.has(t.tenant))
            .map((t) => `${t.member} ${t.seq} +${t.at - t0}`)
            .join(", ")}`,
        ).toEqual([])
        expect(all.distinct).toBe(published.length)
        expect(counts.one, "a member that left handles nothing more").toBe(oneStoppedAt)
        console.log(
          `conformance[${ctx.target.name}] group across tenants: ${published.length} events of ${tenants.length + 1} tenants; tenants run by one/two/three: ${tenantsOf.one.size}/${tenantsOf.two.size}/${tenantsOf.three.size}`,
        )
      }))

    it('10e. tenant "*" is a consume-only wildcard: subscribe and publish refuse it with InvalidName', async () =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        const channel = uniqueName("c")
        const sub = bus.subscribe({ tenant: "*", channel, from: "beginning" })
        const refused = await rejectionOf(async () => {
          for await (const _ of sub) break
        })
        expect(refused).toMatchObject({ _tag: "InvalidName", field: "tenant", rule: "wildcard" })
        await sub.close()
        expect(
          await rejectionOf(() => s.publish(bus, event({ tenant: "*", channel }, "conformance.wild"))),
        ).toMatchObject({ _tag: "InvalidName", rule: "wildcard" })
        // Nor as a channel or group name of a group across tenants.
        const consumer = bus.consume({ tenant: "*", channel: "*", group: "g" }, () => {})
        expect(await rejectionOf(() => consumer.done)).toMatchObject({
          _tag: "InvalidName",
          field: "channel",
        })
        const consumer2 = bus.consume({ tenant: "t", channel, group: "*" }, () => {})
        expect(await rejectionOf(() => consumer2.done)).toMatchObject({ _tag: "InvalidName", field: "group" })
      }))

    it("10c. a restarted consumer resumes from the group position: nothing skipped, nothing handled again", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus1 = await s.bus()
        skip(!bus1.capabilities.consumerGroups, "the transport has no consumer groups")
        const a = uniqueAddress()
        const group = uniqueName("g")
        const handled = new Tally()
        const onEvent = (e: DeliveredEvent) => handled.add(e)

        const first = (await s.publish(bus1, txEvents(a, "first", 10))).ids
        const c1 = s.consume(bus1, { ...a, group }, onEvent)
        await waitFor(() => handled.hasAll(first), timeout, "the first batch")
        await c1.close()

        // Restart within the process: a new consumer on the same bus.
        const second = (await s.publish(bus1, txEvents(a, "second", 10))).ids
        const c2 = s.consume(bus1, { ...a, group }, onEvent)
        await waitFor(() => handled.hasAll(second), timeout, "the second batch after a consumer restart")
        await c2.close()
        await bus1.close()

        // Restart of the process: a new bus, events committed while no consumer ran.
        const bus2 = await s.bus()
        const third = (await s.publish(bus2, txEvents(a, "third", 10))).ids
        s.consume(bus2, { ...a, group }, onEvent)
        await waitFor(() => handled.hasAll(third), timeout, "the third batch after a process restart")
        const sentinel = (await s.publish(bus2, event(a, "sentinel"))).ids[0]!
        await waitFor(() => handled.has(sentinel), timeout, "the sentinel")
        expect(handled.duplicates, "handled again after a restart").toEqual([])
        expect(handled.distinct).toBe(31)
      }))
  })
}
