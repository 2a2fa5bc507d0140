import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { ratio } from "../../harness/stats.js"
import type { Pipe } from "../../targets/pipe.js"
import type { Scenario } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"

/**
 * 1. Throughput and SDK overhead: N producers commit one event per transaction as fast
 * as they can (closed loop), one receiver counts what arrives. Throughput is what was
 * delivered per second inside the measured window; the same work through the raw client
 * gives the baseline and the ratio SDK/raw.
 */

export const deliveryArm = (
  pipe: Pipe,
  params: Record<string, number | string>,
  runBlock: (pipe: Pipe, status: (t: string) => void) => ReturnType<typeof runDeliveryBlock>,
  unavailable: string | undefined,
): Arm => ({
  id: `${pipe.id}${Object.entries(params)
    .map(([k, v]) => `|${k}=${v}`)
    .join("")}`,
  label: `${pipe.label}${Object.entries(params)
    .map(([k, v]) => ` ${k}=${v}`)
    .join("")}`,
  transport: pipe.transport,
  variant: pipe.kind,
  params: { pipe: pipe.id, ...params },
  ...(unavailable !== undefined ? { unavailable } : {}),
  run: (_block, status) => runBlock(pipe, status),
})

export const throughput: Scenario = {
  id: "throughput",
  title: "Throughput and SDK overhead vs the raw client",
  run: async (ctx) => {
    const p = ctx.profile
    const arms: Arm[] = []
    for (const t of ctx.transports) {
      const pipes = [ctx.sdk(t), ...(ctx.raw(t) !== undefined ? [ctx.raw(t) as Pipe] : [])]
      for (const pipe of pipes) {
        arms.push(
          deliveryArm(
            pipe,
            { producers: p.throughput.producers },
            (pp, status) =>
              runDeliveryBlock({
                pipe: pp,
                channel: ctx.channel("tp"),
                subscribers: 1,
                payloadBytes: 256,
                durationMs: p.blockMs,
                warmupMs: p.warmupMs,
                drainMs: p.drainMs,
                readyTimeoutMs: p.readyTimeoutMs,
                cpu: ctx.cpu,
                status,
                load: { kind: "closed", producers: p.throughput.producers },
              }),
            ctx.reasonFor(pipe),
          ),
        )
      }
    }
    const result = await runInterleaved(arms, {
      blocks: p.throughput.blocks,
      warmupBlocks: p.throughput.warmupBlocks,
      progress: ctx.progress,
      scenario: "throughput",
      aborted: ctx.aborted,
    })
    const ratios: Record<string, unknown> = {}
    for (const t of ctx.transports) {
      const sdk = result.arms.find((a) => a.params.pipe === t && a.status === "ok")
      const raw = result.arms.find((a) => a.transport === t && a.variant === "raw" && a.status === "ok")
      if (sdk === undefined || raw === undefined) continue
      const s = sdk.metrics.deliveredPerSec?.median ?? Number.NaN
      const r = raw.metrics.deliveredPerSec?.median ?? Number.NaN
      ratios[t] = {
        sdkPerSec: s,
        rawPerSec: r,
        throughputRatio: ratio(s, r),
        cpuPerEventRatio: ratio(
          sdk.metrics.cpuUsPerEvent?.median ?? Number.NaN,
          raw.metrics.cpuUsPerEvent?.median ?? Number.NaN,
        ),
      }
    }
    return {
      id: "throughput",
      title: throughput.title,
      method: [
        `Closed loop: ${p.throughput.producers} producers, each committing one event (≈256 B of data) per transaction and starting the next as soon as the commit returns; one receiver.`,
        "Throughput = events delivered to the receiver per second within the measured window (after the warm-up); the producers' commit rate is reported next to it.",
        "SDK: `createBus` + `publish(tx)` in a pg transaction + `subscribe()`; for NATS and Redis this is the whole product path (Postgres outbox → relay → broker → subscriber), so the ratio prices the transactional outbox as well as the SDK.",
        "Raw: pg `INSERT … ; pg_notify` + LISTEN; nats.js `js.publish` + ordered consumer; ioredis `XADD` + `XREADGROUP`/`XACK`.",
        "Latency figures in this scenario are closed-loop (from the start of each send) and only indicative; see the latency scenario for open-loop numbers.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
      derived: { ratios },
    }
  },
}
