import { type Arm, runInterleaved } from "../../harness/blocks.js"
import type { Pipe } from "../../targets/pipe.js"
import type { Scenario } from "../context.js"
import { runDeliveryBlock } from "../delivery.js"

/** 6. Payload size: the same open-loop rate with events of 64 B to 64 KB. */
export const payload: Scenario = {
  id: "payload",
  title: "Payload size",
  run: async (ctx) => {
    const p = ctx.profile.payload
    const arms: Arm[] = []
    for (const size of p.sizes) {
      for (const t of ctx.transports) {
        const raw = p.raw ? ctx.raw(t) : undefined
        for (const pipe of [ctx.sdk(t), ...(raw !== undefined ? [raw as Pipe] : [])]) {
          const reason =
            ctx.reasonFor(pipe) ??
            (pipe.maxPayloadBytes !== undefined && size > pipe.maxPayloadBytes - 60
              ? `payload over the path's limit (${pipe.maxPayloadBytes + 1} bytes per NOTIFY)`
              : undefined)
          arms.push({
            id: `${pipe.id}|bytes=${size}`,
            label: `${pipe.label} ${size} B`,
            transport: t,
            variant: pipe.kind,
            params: { pipe: pipe.id, payloadBytes: size, rate: p.rate },
            ...(reason ? { unavailable: reason } : {}),
            run: (_b, status) =>
              runDeliveryBlock({
                pipe,
                channel: ctx.channel("pl"),
                subscribers: 1,
                payloadBytes: size,
                durationMs: ctx.profile.blockMs,
                warmupMs: ctx.profile.warmupMs,
                drainMs: ctx.profile.drainMs,
                readyTimeoutMs: ctx.profile.readyTimeoutMs,
                cpu: ctx.cpu,
                status,
                load: { kind: "open", rate: p.rate },
              }),
          })
        }
      }
    }
    const result = await runInterleaved(arms, {
      blocks: p.blocks,
      warmupBlocks: p.warmupBlocks,
      progress: ctx.progress,
      scenario: "payload",
      aborted: ctx.aborted,
    })
    return {
      id: "payload",
      title: payload.title,
      method: [
        `Open loop at ${p.rate} events/s, one event per transaction, event data of ${p.sizes.join(" / ")} bytes (JSON with a padding string); one receiver.`,
        "Postgres NOTIFY carries at most 8000 bytes: the SDK's notification is a pointer and the reader fetches the row, so every size works; the raw pg baseline carries the event in the payload and cannot send the largest sizes.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
    }
  },
}
