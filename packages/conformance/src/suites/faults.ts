import { performance } from "node:perf_hooks"
import { setTimeout as delay } from "node:timers/promises"
import type { EventInput } from "@bus/core"
import { uuidv7 } from "@bus/core/adapter"
import { afterAll, describe, expect, it } from "vitest"
import {
  event,
  orderViolations,
  settle,
  Tally,
  tagOf,
  uniqueAddress,
  waitFor,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** Result of one fault scenario, as logged. */
export interface FaultReport {
  readonly scenario: string
  /** Events in transactions that committed (the publisher saw the commit succeed). */
  readonly sent: number
  /** Events in transactions whose commit failed or whose outcome is unknown (may or may not arrive). */
  readonly ambiguous: number
  /** Distinct committed events the handler saw. */
  readonly delivered: number
  readonly lost: number
  readonly duplicates: number
}

/**
 * Runs one fault scenario: steady publishing with a consumer group member and a
 * subscriber running, the fault injected mid-stream, publishing continued until it
 * succeeds again, then every committed event must reach the handler exactly once.
 */
async function runFaultScenario(
  ctx: SuiteContext,
  scenario: string,
  inject: () => Promise<void>,
): Promise<FaultReport> {
  const recovery = Math.max(ctx.deliveryTimeoutMs, 120_000)
  return withSession(ctx, async (s) => {
    const bus = await s.bus()
    const a = uniqueAddress()
    const groups = bus.capabilities.consumerGroups
    const handledByGroup = new Tally()
    if (groups)
      s.consume(bus, { ...a, group: "faults", initialBackoffMs: 50, maxBackoffMs: 1_000 }, (e) =>
        handledByGroup.add(e),
      )
    const sub = await s.live(bus, a)
    // Without consumer groups the subscriber is the handler.
    const handled = groups ? handledByGroup : sub

    const confirmed = new Set<string>()
    const ambiguous = new Set<string>()
    const failureTags = new Map<string, number>()
    let stop = false
    const producer = (async () => {
      for (let tx = 0; !stop; tx++) {
        const inputs: Array<EventInput & { id: string }> = Array.from({ length: 10 }, (_, seq) => ({
          ...event(a, "conformance.fault", { tx: `f${tx}`, seq }),
          id: uuidv7(),
        }))
        try {
          await s.publish(bus, inputs)
          for (const e of inputs) confirmed.add(e.id)
        } catch (error) {
          // The commit may or may not have happened: such events may arrive, or not.
          for (const e of inputs) ambiguous.add(e.id)
          const tag = tagOf(error) ?? (error instanceof Error ? error.name : "unknown")
          failureTags.set(tag, (failureTags.get(tag) ?? 0) + 1)
          await delay(100)
        }
        // Pacing, not waiting for a condition: a steady stream rather than a flood.
        await delay(5)
      }
    })()
    const stopProducer = async () => {
      stop = true
      await producer
    }
    s.defer(stopProducer)

    let injectMs = 0
    try {
      await waitFor(
        () => confirmed.size >= 200 && handled.distinct >= 100 && sub.distinct >= 100,
        ctx.deliveryTimeoutMs,
        "steady traffic before the fault",
      )
      const before = confirmed.size
      const started = performance.now()
      await inject()
      injectMs = performance.now() - started
      await waitFor(
        () => confirmed.size >= before + 300,
        recovery,
        "publishing to succeed again after the fault",
      )
    } finally {
      await stopProducer()
    }

    const missing = () => handled.missing(confirmed).length + sub.missing(confirmed).length
    await waitFor(
      () => missing() === 0,
      recovery,
      () =>
        `every committed event after the fault (handler missing ${handled.missing(confirmed).length}, subscriber missing ${sub.missing(confirmed).length} of ${confirmed.size})`,
    )
    const sentinels = await settle(s, bus, [sub])
    if (groups) await waitFor(() => handledByGroup.hasAll(sentinels), recovery, "the sentinel at the handler")

    const known = (id: string) => confirmed.has(id) || ambiguous.has(id) || sentinels.has(id)
    const report: FaultReport = {
      scenario,
      sent: confirmed.size,
      ambiguous: ambiguous.size,
      delivered: [...confirmed].filter((id) => handled.has(id)).length,
      lost: handled.missing(confirmed).length,
      duplicates: handled.duplicates.length,
    }
    const failures = [...failureTags].map(([tag, n]) => `${tag}×${n}`).join(",") || "none"
    console.log(
      `conformance[${ctx.target.name}] fault "${scenario}": sent=${report.sent} delivered=${report.delivered} lost=${report.lost} duplicates=${report.duplicates} ambiguous=${report.ambiguous} (arrived ${[...ambiguous].filter((id) => handled.has(id)).length}) subscriber: lost=${sub.missing(confirmed).length} duplicates=${sub.duplicates.length} publish failures=${failures} fault took ${Math.round(injectMs)}ms`,
    )
    expect(report.lost, "lost").toBe(0)
    expect(handled.duplicates, "duplicates to the handler").toEqual([])
    expect(sub.missing(confirmed), "lost by the subscriber").toEqual([])
    expect(
      handled.events.map((e) => e.id).filter((id) => !known(id)),
      "events nobody published",
    ).toEqual([])
    expect(orderViolations(handled.events), "per-transaction order").toEqual([])
    return report
  })
}

/** Invariant 1 under faults, through the target's hooks. Runs alone (not concurrent). */
export function faultTests(ctx: SuiteContext): void {
  const { target } = ctx
  const hooks = target.faults ?? {}
  const scenarios: Array<readonly [string, (() => Promise<void>) | undefined]> = [
    ["kill connections", hooks.killConnections && (() => hooks.killConnections!())],
    ["restart server", hooks.restartServer && (() => hooks.restartServer!())],
    [`pause server ${ctx.pauseMs} ms`, hooks.pauseServer && (() => hooks.pauseServer!(ctx.pauseMs))],
    ...Object.entries(target.extraFaults ?? {}),
  ]
  const ran: Array<string> = []

  describe("faults", () => {
    afterAll(() => {
      const skipped = scenarios.map(([name]) => name).filter((name) => !ran.includes(name))
      console.log(
        `conformance[${target.name}] fault scenarios ran: ${ran.join("; ") || "none"}; not run: ${skipped.join("; ") || "none"}`,
      )
    })
    // Like Watermill's feature flags: a scenario the target has no hook for is not
    // registered at all (the log line above names it), rather than left as a skipped test.
    for (const [name, inject] of scenarios) {
      if (inject === undefined) continue
      it(`12. fault "${name}" mid-stream while publishing continues: 0 lost, 0 duplicates to the handler`, async () => {
        ran.push(name)
        await runFaultScenario(ctx, name, inject)
      }, 600_000)
    }
  })
}
