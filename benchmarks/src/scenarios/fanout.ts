import { type Arm, runInterleaved, type summarize } from "../harness/blocks.js"
import { runDeliveryBlock } from "../harness/delivery.js"
import { settledHeap } from "../harness/memory.js"
import type { BlockRecord } from "../harness/types.js"
import type { OnReceive, Pipe, Session } from "../targets/pipe.js"
import type { Scenario } from "./context.js"

/**
 * A pipe whose first `open` really subscribes and whose later ones reuse those
 * subscriptions (new blocks get the receipts through a switchable handler), so N
 * subscriptions are opened once per arm instead of once per block.
 */
const reusable = (pipe: Pipe) => {
  let session: Promise<Session> | undefined
  let handler: OnReceive = () => undefined
  const wrapped: Pipe = {
    ...pipe,
    open: async (r) => {
      handler = r.onReceive
      session ??= pipe.open({ ...r, onReceive: (...args) => handler(...args) })
      const s = await session
      return { send: s.send, errors: s.errors, close: async () => undefined }
    },
  }
  return {
    pipe: wrapped,
    opened: () => session !== undefined,
    close: async () => {
      const s = await session?.catch(() => undefined)
      session = undefined
      await s?.close()
    },
  }
}

/** 5. Fan-out: N subscribers of one channel in one process. */
export const fanout: Scenario = {
  id: "fanout",
  title: "Fan-out to many subscribers of one channel",
  run: async (ctx) => {
    const p = ctx.profile.fanout
    const rateFor = (n: number) =>
      Math.max(p.minRate, Math.min(p.maxRate, Math.round(p.deliveriesPerSec / n)))
    const arms: Arm[] = []
    for (const n of p.subscriberCounts) {
      for (const t of ctx.transports) {
        const base = ctx.sdk(t)
        const rate = rateFor(n)
        const reason = ctx.reason(t)
        const r = reusable(base)
        arms.push({
          id: `${t}|n=${n}`,
          label: `${base.label} ${n} subscribers @${rate}/s`,
          transport: t,
          variant: "sdk",
          params: { pipe: t, subscribers: n, rate },
          ...(reason ? { unavailable: reason } : {}),
          run: async (_b, status) => {
            const first = !r.opened()
            const heap0 = first ? await settledHeap() : 0
            const t0 = performance.now()
            return runDeliveryBlock({
              pipe: r.pipe,
              channel: ctx.channel("fan"),
              subscribers: n,
              payloadBytes: 256,
              durationMs: ctx.profile.blockMs,
              warmupMs: ctx.profile.warmupMs,
              drainMs: ctx.profile.drainMs,
              readyTimeoutMs: p.setupTimeoutMs,
              cpu: ctx.cpu,
              status,
              load: { kind: "open", rate },
              afterOpen: async (): Promise<Record<string, number>> => {
                if (!first) return {}
                const setupMs = performance.now() - t0
                const heap1 = await settledHeap()
                // Below 100 subscribers the per-subscriber share drowns in GC noise and the feed's own cost.
                return n >= 100
                  ? { setupMs, heapBytesPerSubscriber: (heap1 - heap0) / n, heapDeltaBytes: heap1 - heap0 }
                  : { setupMs, heapDeltaBytes: heap1 - heap0 }
              },
            })
          },
          teardown: () => r.close(),
        })
      }
    }
    // One arm at a time: each arm's subscriptions stay open for its blocks only (10,000 idle
    // subscriptions of another arm, e.g. JetStream consumers with heartbeats, would load the
    // machine during the next arm).
    const all: { arms: ReturnType<typeof summarize>["arms"]; blocks: BlockRecord[] } = {
      arms: [],
      blocks: [],
    }
    for (const arm of arms) {
      if (ctx.aborted()) break
      const r = await runInterleaved([arm], {
        blocks: p.blocks,
        warmupBlocks: 0,
        progress: ctx.progress,
        scenario: "fanout",
        aborted: ctx.aborted,
      })
      all.arms.push(...r.arms)
      all.blocks.push(...r.blocks)
    }
    return {
      id: "fanout",
      title: fanout.title,
      method: [
        `N = ${p.subscriberCounts.join(" / ")} subscribers (\`bus.subscribe\`, from "now") of one tenant channel in this process. The rate is ${p.deliveriesPerSec.toLocaleString("en")} deliveries/s divided by N, kept within ${p.minRate}–${p.maxRate} events/s, so every arm does comparable work.`,
        "Latency: every subscriber's receipt of every event, from the intended send time (open loop), in one histogram per block.",
        "Each arm opens its N subscriptions once and runs its blocks back to back on them; arms run one after the other (not interleaved), because opening 10,000 subscriptions per block would dominate the run and idle subscriptions of one arm would load the next.",
        "Memory per subscriber: V8 heap used after a full GC with the N subscriptions live (primed) minus before opening them, divided by N (reported from N = 100 on; below that GC noise and the channel's shared feed dominate). It covers the SDK's and the client library's objects in this process only (not the broker's memory).",
        "Setup time: opening the N subscriptions until each has received a primer event.",
      ],
      arms: all.arms,
      blocks: all.blocks,
      notes: [],
    }
  },
}
