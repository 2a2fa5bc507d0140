import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { ratio } from "../../harness/stats.js"
import type { Pipe } from "../../targets/pipe.js"
import type { Scenario } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"
import { deliveryArm } from "../throughput/measure.js"

/** 2. Latency commit → handler at fixed open-loop rates. */
export const latency: Scenario = {
  id: "latency",
  title: "Latency at fixed rates (open loop)",
  run: async (ctx) => {
    const p = ctx.profile
    const arms: Arm[] = []
    for (const rate of p.latency.rates) {
      for (const t of ctx.transports) {
        const raw = p.latency.raw ? ctx.raw(t) : undefined
        for (const pipe of [ctx.sdk(t), ...(raw !== undefined ? [raw as Pipe] : [])]) {
          arms.push(
            deliveryArm(
              pipe,
              { rate },
              (pp, status) =>
                runDeliveryBlock({
                  pipe: pp,
                  channel: ctx.channel("lat"),
                  subscribers: 1,
                  payloadBytes: 256,
                  durationMs: p.blockMs,
                  warmupMs: p.warmupMs,
                  drainMs: p.drainMs,
                  readyTimeoutMs: p.readyTimeoutMs,
                  cpu: ctx.cpu,
                  status,
                  load: { kind: "open", rate },
                }),
              ctx.reasonFor(pipe),
            ),
          )
        }
      }
    }
    const result = await runInterleaved(arms, {
      blocks: p.latency.blocks,
      warmupBlocks: p.latency.warmupBlocks,
      progress: ctx.progress,
      scenario: "latency",
      aborted: ctx.aborted,
    })
    const ratios: Record<string, Record<string, number>> = {}
    for (const rate of p.latency.rates) {
      for (const t of ctx.transports) {
        const sdk = result.arms.find(
          (a) => a.params.pipe === t && a.params.rate === rate && a.status === "ok",
        )
        const raw = result.arms.find(
          (a) => a.transport === t && a.variant === "raw" && a.params.rate === rate && a.status === "ok",
        )
        if (sdk === undefined || raw === undefined) continue
        ratios[`${t}@${rate}`] = {
          p50Ratio: ratio(sdk.metrics.p50?.median ?? Number.NaN, raw.metrics.p50?.median ?? Number.NaN),
          p99Ratio: ratio(sdk.metrics.p99?.median ?? Number.NaN, raw.metrics.p99?.median ?? Number.NaN),
        }
      }
    }
    return {
      id: "latency",
      title: latency.title,
      method: [
        `Open loop at ${p.latency.rates.join(" / ")} events/s: the send times are fixed before the block starts, each send is one transaction with one event (≈256 B), issued at its time whether or not earlier ones finished (producer pool of 16 connections).`,
        "Latency = handler receipt time − intended send time, so queueing in the producer (pool waits, slow commits) counts; `commit p99` is intended time → COMMIT returned.",
        "Events not delivered when the drain ends are recorded with the time they had waited so far (a lower bound), never dropped from the histogram.",
        "A block is saturated when the generator lagged (p99 > 5 ms), the commit rate fell short (< 95 %), the delivery backlog grew, events were undelivered, or sends failed.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
      derived: { ratios },
    }
  },
}
