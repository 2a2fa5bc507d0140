import { type Arm, runInterleaved, type summarize } from "../../harness/blocks.js"
import { settledHeap } from "../../harness/memory.js"
import type { BlockRecord } from "../../harness/types.js"
import { tenant } from "../../targets/pipe.js"
import type { Scenario } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"

/** Issue 18's target: 10,000 subscribers of one address set up within this (ms). */
export const natsSetupTargetMs = 5_000

/** Subscribers per arm, and the event rate for each (deliveries/s stay near 10,000). */
const arms = (quick: boolean) =>
  (quick ? [1, 1_000, 10_000] : [1, 1_000, 10_000]).map((n) => ({
    n,
    rate: Math.max(1, Math.min(100, Math.round(10_000 / n))),
  }))

/**
 * JetStream consumers on the bench stream that read `channel`'s subject, counted by the
 * server (its consumer list through a separate connection), not by the SDK.
 */
const consumersOn = async (url: string, channel: string): Promise<number> => {
  const { connect } = await import("@nats-io/transport-node")
  const { jetstreamManager } = await import("@nats-io/jetstream")
  const nc = await connect({ servers: url, name: "bench-nats-fanout-probe" })
  try {
    const jsm = await jetstreamManager(nc)
    const subject = `bench.${tenant}.${channel}`
    let n = 0
    for await (const c of jsm.consumers.list("BENCH")) {
      if (c.config.filter_subject === subject || c.config.filter_subjects?.includes(subject)) n++
    }
    return n
  } finally {
    await nc.close()
  }
}

/** NATS fan-out: N subscribers of one channel share one JetStream consumer (issue 18 item 5). */
export const natsFanout: Scenario = {
  id: "natsFanout",
  title: "NATS: many subscribers of one channel",
  run: async (ctx) => {
    const reason = ctx.reason("nats")
    const list: Arm[] = []
    let channel = ""
    for (const { n, rate } of arms(ctx.profile.name === "quick")) {
      const pipe = ctx.sdk("nats")
      list.push({
        id: `nats|n=${n}`,
        label: `nats (SDK) ${n} subscribers @${rate}/s`,
        transport: "nats",
        variant: "sdk",
        params: { pipe: "nats", subscribers: n, rate },
        ...(reason ? { unavailable: reason } : {}),
        run: async (_b, status) => {
          const heap0 = await settledHeap()
          const t0 = performance.now()
          channel = ctx.channel("natsfan")
          return runDeliveryBlock({
            pipe,
            channel,
            subscribers: n,
            payloadBytes: 256,
            durationMs: ctx.profile.blockMs * 2,
            warmupMs: ctx.profile.warmupMs,
            drainMs: ctx.profile.drainMs * 2,
            readyTimeoutMs: 120_000,
            cpu: ctx.cpu,
            status,
            load: { kind: "open", rate },
            afterOpen: async (): Promise<Record<string, number>> => {
              // Every subscription has received a primer event: set up and live.
              const setupMs = performance.now() - t0
              const heap1 = await settledHeap()
              const consumers = await consumersOn(ctx.env.nats?.url as string, channel)
              return {
                setupMs,
                consumers,
                heapDeltaBytes: heap1 - heap0,
                ...(n >= 100 ? { heapBytesPerSubscriber: (heap1 - heap0) / n } : {}),
              }
            },
          })
        },
      })
    }
    const all: { arms: ReturnType<typeof summarize>["arms"]; blocks: BlockRecord[] } = {
      arms: [],
      blocks: [],
    }
    // One arm at a time: 10,000 open subscriptions of one arm must not load the next.
    for (const arm of list) {
      if (ctx.aborted()) break
      const r = await runInterleaved([arm], {
        blocks: ctx.profile.name === "quick" ? 1 : 3,
        warmupBlocks: 0,
        progress: ctx.progress,
        scenario: "natsFanout",
        aborted: ctx.aborted,
      })
      all.arms.push(...r.arms)
      all.blocks.push(...r.blocks)
    }
    return {
      id: "natsFanout",
      title: natsFanout.title,
      method: [
        `N = ${arms(false)
          .map((a) => a.n.toLocaleString("en"))
          .join(
            " / ",
          )} subscribers (\`bus.subscribe\`, from "now", the Promise facade) of one tenant channel on the NATS transport in this process, with the Postgres outbox and the in-process relay (as \`createBus\` runs it). Rate: 10,000 deliveries/s divided by N, within 1–100 events/s.`,
        "Setup: from the first `subscribe` call until every subscription has received a primer event (all of them live). Each block opens its N subscriptions anew, so the setup figure is measured once per block.",
        "Consumers: JetStream consumers on the stream that read the channel's subject, counted by the server (its consumer list, through a separate connection) once every subscription is live.",
        "Latency: every subscriber's receipt of every event, from the intended send time (open loop), in one histogram per block.",
        "Memory per subscriber: V8 heap after a full GC with the N subscriptions live minus before opening them, divided by N.",
      ],
      arms: all.arms,
      blocks: all.blocks,
      notes: [],
    }
  },
}
