import { performance } from "node:perf_hooks"
import type { Bus, DeliveredEvent } from "@bus/core"
import type { DeadLetter } from "@bus/core/adapter"
import { describe, expect, it } from "vitest"
import {
  event,
  Tally,
  txEvents,
  uniqueAddress,
  uniqueName,
  waitFor,
  within,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

const groupsSupported = (ctx: SuiteContext, bus: Bus) =>
  ctx.features.consumerGroups && bus.capabilities.consumerGroups

/** Consumer groups: retries with backoff, dead letters, exclusive handling, resume after restart. */
export function groupTests(ctx: SuiteContext): void {
  const timeout = ctx.deliveryTimeoutMs

  // A transport without consumer groups does not register these tests at all.
  if (!ctx.features.consumerGroups) return
  describe.concurrent("consumer groups", () => {
    it("10a. a failing event is retried with backoff, then dead-lettered after maxAttempts; the others keep flowing", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus = await s.bus()
        skip(!groupsSupported(ctx, bus), "the transport has no consumer groups")
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
        skip(!groupsSupported(ctx, bus1), "the transport has no consumer groups")
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

    it("10c. a restarted consumer resumes from the group position: nothing skipped, nothing handled again", async ({
      skip,
    }) =>
      withSession(ctx, async (s) => {
        const bus1 = await s.bus()
        skip(!groupsSupported(ctx, bus1), "the transport has no consumer groups")
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
