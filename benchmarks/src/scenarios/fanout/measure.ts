import { type Arm, runInterleaved, type summarize } from "../../harness/blocks.js"
import { settledHeap } from "../../harness/memory.js"
import type { BlockRecord, TransportId } from "../../harness/types.js"
import type { OnReceive, Pipe, Session } from "../../targets/pipe.js"
import { runSseFanout } from "../../targets/sse.js"
import type { Scenario } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"

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

/** A target of issue 18 beside the figure measured for it. */
export interface FanoutTarget {
  readonly target: string
  /** Where it was measured (transport, arm). */
  readonly on: string
  readonly measured: number
  readonly unit: "ratio" | "µs" | "ms" | "bytes" | "count"
  readonly limit: number
  readonly met: boolean
  /** A block of an arm behind the figure was saturated (the machine, not the SDK, may set it). */
  readonly saturated: boolean
}

const median = (arm: ReturnType<typeof summarize>["arms"][number] | undefined, key: string): number =>
  arm?.status === "ok" ? (arm.metrics[key]?.median ?? Number.NaN) : Number.NaN

/** 5. Fan-out: N subscribers of one channel in one process. */
export const fanout: Scenario = {
  id: "fanout",
  title: "Fan-out to many subscribers of one channel",
  run: async (ctx) => {
    const p = ctx.profile.fanout
    const rateFor = (n: number) =>
      Math.max(p.minRate, Math.min(p.maxRate, Math.round(p.deliveriesPerSec / n)))
    const arms: Arm[] = []
    const deliveryArm = (t: TransportId, n: number, rate: number, variant: "sdk" | "target"): Arm => {
      const base = ctx.sdk(t)
      const reason = ctx.reason(t)
      const r = reusable(base)
      return {
        id: variant === "sdk" ? `${t}|n=${n}` : `${t}|target|n=${n}`,
        label: `${base.label} ${n} subscribers @${rate}/s${variant === "target" ? " (target arm)" : ""}`,
        transport: t,
        variant,
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
      }
    }
    for (const n of p.subscriberCounts)
      for (const t of ctx.transports) arms.push(deliveryArm(t, n, rateFor(n), "sdk"))
    // The targets' pair: N subscribers and one, at the same rate, so the p99 ratio isolates fan-out.
    for (const t of ctx.transports) {
      arms.push(deliveryArm(t, 1, p.targetRate, "target"))
      arms.push(deliveryArm(t, p.targetSubscribers, p.targetRate, "target"))
    }
    // SSE: over Postgres when it runs in this suite, else over the in-memory transport.
    const sseTransport: TransportId | undefined = ctx.transports.includes("postgres-notify")
      ? "postgres-notify"
      : ctx.transports.includes("memory")
        ? "memory"
        : undefined
    if (p.sseClients > 0 && sseTransport !== undefined) {
      const reason = ctx.reason(sseTransport)
      arms.push({
        id: `sse|${sseTransport}|n=${p.sseClients}`,
        label: `SSE over ${sseTransport}: ${p.sseClients.toLocaleString("en")} clients @${p.sseRate}/s`,
        transport: sseTransport,
        variant: "sse",
        params: { pipe: `sse (${sseTransport})`, subscribers: p.sseClients, rate: p.sseRate },
        ...(reason ? { unavailable: reason } : {}),
        run: (_b, status) =>
          runSseFanout({
            transport: sseTransport,
            env: ctx.env,
            channel: ctx.channel("sse"),
            clients: p.sseClients,
            rate: p.sseRate,
            durationMs: ctx.profile.blockMs,
            drainMs: ctx.profile.drainMs,
            payloadBytes: 256,
            connectTimeoutMs: p.sseConnectTimeoutMs,
            cpu: ctx.cpu,
            status,
          }),
      })
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
    const targets: FanoutTarget[] = []
    const armById = (id: string) => all.arms.find((a) => a.arm === id)
    for (const t of ctx.transports) {
      const one = armById(`${t}|target|n=1`)
      const many = armById(`${t}|target|n=${p.targetSubscribers}`)
      if (one?.status !== "ok" || many?.status !== "ok") continue
      const ratio = median(many, "p99") / median(one, "p99")
      const saturated = one.saturatedBlocks > 0 || many.saturatedBlocks > 0
      targets.push({
        target: `p99 with ${p.targetSubscribers.toLocaleString("en")} subscribers ÷ p99 with 1, at ${p.targetRate}/s`,
        on: t,
        measured: ratio,
        unit: "ratio",
        limit: 2,
        met: ratio <= 2,
        saturated,
      })
      const cpu = median(many, "cpuUsPerEvent")
      targets.push({
        target: `CPU per delivery, ${p.targetSubscribers.toLocaleString("en")} subscribers at ${p.targetRate}/s`,
        on: t,
        measured: cpu,
        unit: "µs",
        limit: 5,
        met: cpu <= 5,
        saturated: many.saturatedBlocks > 0,
      })
    }
    const sse = all.arms.find((a) => a.variant === "sse" && a.status === "ok")
    if (sse !== undefined) {
      const on = `SSE over ${sse.transport}, ${p.sseClients.toLocaleString("en")} clients at ${p.sseRate}/s`
      const p99 = median(sse, "p99")
      const lost = median(sse, "lost")
      const heap = median(sse, "heapBytesPerClient")
      const connect = median(sse, "connectMs")
      const saturated = sse.saturatedBlocks > 0
      targets.push(
        {
          target: "SSE p99 delivery latency",
          on,
          measured: p99,
          unit: "ms",
          limit: 100,
          met: p99 <= 100,
          saturated,
        },
        {
          target: "SSE events lost",
          on,
          measured: lost,
          unit: "count",
          limit: 0,
          met: lost === 0,
          saturated,
        },
        {
          target: "SSE server heap per client",
          on,
          measured: heap,
          unit: "bytes",
          limit: 20 * 1024,
          met: heap <= 20 * 1024,
          saturated,
        },
        {
          target: "SSE: all clients connected and live",
          on,
          measured: connect,
          unit: "ms",
          limit: 10_000,
          met: connect <= 10_000,
          saturated,
        },
      )
    }
    return {
      id: "fanout",
      title: fanout.title,
      method: [
        `N = ${p.subscriberCounts.join(" / ")} subscribers (\`bus.subscribe\`, from "now") of one tenant channel in this process. The rate is ${p.deliveriesPerSec.toLocaleString("en")} deliveries/s divided by N, kept within ${p.minRate}–${p.maxRate} events/s, so every arm does comparable work.`,
        `Target arms: ${p.targetSubscribers.toLocaleString("en")} subscribers and 1 subscriber, both at ${p.targetRate} events/s; the p99 ratio of the two isolates the cost of fan-out. CPU per delivery is this process's CPU time over the block divided by deliveries (it includes the producer's share).`,
        "Latency: every subscriber's receipt of every event, from the intended send time (open loop), in one histogram per block.",
        "Each arm opens its N subscriptions once and runs its blocks back to back on them; arms run one after the other (not interleaved), because opening 10,000 subscriptions per block would dominate the run and idle subscriptions of one arm would load the next.",
        "Memory per subscriber: V8 heap used after a full GC with the N subscriptions live (primed) minus before opening them, divided by N (reported from N = 100 on; below that GC noise and the channel's shared feed dominate). It covers the SDK's and the client library's objects in this process only (not the broker's memory).",
        "Setup time: opening the N subscriptions until each has received a primer event.",
        `SSE: one \`nodeSseHandler\` endpoint in this process over a bus on ${sseTransport ?? "–"}; ${p.sseClients.toLocaleString("en")} real SSE clients in a separate OS process (\`benchmarks/src/targets/sse-client.mjs\`, plain \`http\` connections parsing the event stream) report each event's receive time over IPC. Latency is from the intended send time to receipt at the client (both processes read \`performance.timeOrigin + performance.now()\`). Lost = events sent in the block that some client did not get. Heap per client: this process's heap after a full GC with every client live minus before, divided by N. Connect time: from the first connection until every client received a primer event.`,
      ],
      arms: all.arms,
      blocks: all.blocks,
      notes: [],
      derived: { targets },
    }
  },
}
