import { Redis } from "ioredis"
import { type Arm, runInterleaved } from "../../harness/blocks.js"
import { LatencyHistogram } from "../../harness/histogram.js"
import { runOpenLoop } from "../../harness/schedule.js"
import type { BlockMeasurement, TransportId } from "../../harness/types.js"
import { sleep } from "../../targets/pipe.js"
import type { Scenario, ScenarioContext } from "../context.js"

/**
 * 7. Recovery: under steady open-loop load, the subscriber's connection is cut for a
 * while, then the harness measures how long the subscriber takes to have every event
 * committed before the fault ended, and counts events lost (must be 0) and duplicates.
 *
 * - postgres-notify: the LISTEN connection is terminated (`pg_terminate_backend` through
 *   test-infra's `terminateConnections`) again and again for the whole outage, so it
 *   cannot stay connected;
 * - redis-streams: the transport's live-read connections (`CLIENT KILL ID`) the same way;
 * - nats: the server is paused (SIGSTOP) for the outage: NATS 2.9 cannot drop one client
 *   connection from the server side without a system account.
 */

const faultLabel: Record<string, string> = {
  "postgres-notify": "LISTEN connection terminated repeatedly",
  "redis-streams": "live-read connections killed repeatedly (CLIENT KILL)",
  nats: "nats-server paused (SIGSTOP)",
}

const injectFault = async (ctx: ScenarioContext, t: TransportId, outageMs: number): Promise<number> => {
  const until = performance.now() + outageMs
  let kills = 0
  if (t === "postgres-notify") {
    const pgHandle = ctx.env.postgres
    if (pgHandle === undefined) throw new Error("Postgres is not running")
    while (performance.now() < until) {
      kills += await pgHandle.terminateConnections({
        applicationName: "bench-listener-bench_postgres_notify",
      })
      await sleep(50)
    }
  } else if (t === "redis-streams") {
    const r = new Redis(ctx.env.redis?.url as string, { connectionName: "bench-fault" })
    r.on("error", () => undefined)
    try {
      while (performance.now() < until) {
        const list = (await r.client("LIST")) as string
        for (const line of list.split("\n")) {
          const id = /(?:^|\s)id=(\d+)/.exec(line)?.[1]
          const name = /(?:^|\s)name=(\S*)/.exec(line)?.[1] ?? ""
          if (id !== undefined && name.endsWith("-feed")) {
            await r.client("KILL", "ID", id).catch(() => undefined)
            kills++
          }
        }
        await sleep(50)
      }
    } finally {
      r.disconnect()
    }
  } else if (t === "nats") {
    const nats = ctx.env.nats
    if (nats === undefined) throw new Error("nats-server is not running")
    await nats.pause()
    try {
      await sleep(Math.max(0, until - performance.now()))
    } finally {
      await nats.resume()
    }
    kills = 1
  }
  return kills
}

export const recovery: Scenario = {
  id: "recovery",
  title: "Recovery after the subscriber's connection is cut",
  run: async (ctx) => {
    const p = ctx.profile.recovery
    const arms: Arm[] = []
    for (const t of ctx.transports) {
      if (t === "memory") continue
      const pipe = ctx.sdk(t)
      const reason = ctx.reason(t)
      arms.push({
        id: `${t}|outage=${p.outageMs}`,
        label: `${pipe.label}: ${faultLabel[t]} for ${p.outageMs / 1000} s @${p.rate}/s`,
        transport: t,
        variant: "sdk",
        params: { pipe: t, rate: p.rate, outageMs: p.outageMs, fault: faultLabel[t] ?? "" },
        ...(reason ? { unavailable: reason } : {}),
        run: async (_b, status): Promise<BlockMeasurement> => {
          const afterMs = Math.max(2_000, p.outageMs)
          const durationMs = p.beforeMs + p.outageMs + afterMs
          const capacity = Math.floor((p.rate * durationMs) / 1000) + 1
          const deliveredAt = new Float64Array(capacity).fill(Number.NaN)
          const committedAt = new Float64Array(capacity).fill(Number.NaN)
          let delivered = 0
          let duplicates = 0
          const before = new LatencyHistogram()
          const all = new LatencyHistogram()
          let faultFrom = Number.POSITIVE_INFINITY
          const session = await pipe.open({
            channel: ctx.channel("rec"),
            subscribers: 1,
            payloadBytes: 256,
            readyTimeoutMs: ctx.profile.readyTimeoutMs,
            onReceive: (seq, intendedAt, _s, at) => {
              if (seq >= capacity) return
              if (!Number.isNaN(deliveredAt[seq] as number)) {
                duplicates++
                return
              }
              deliveredAt[seq] = at
              delivered++
              all.recordMs(at - intendedAt)
              if (intendedAt < faultFrom) before.recordMs(at - intendedAt)
            },
          })
          try {
            let kills = 0
            let faultEnd = Number.NaN
            const fault = (async () => {
              await sleep(p.beforeMs)
              faultFrom = performance.now()
              kills = await injectFault(ctx, t, p.outageMs)
              faultEnd = performance.now()
            })()
            const load = await runOpenLoop({
              ratePerSec: p.rate,
              durationMs,
              warmupMs: 0,
              maxInFlight: Math.max(64, p.rate * 10),
              send: (seq, intendedAt) => session.send([seq], intendedAt),
              onCommitted: (seq, _i, at) => {
                committedAt[seq] = at
              },
              onTick: () =>
                status(
                  `${delivered} delivered${Number.isFinite(faultFrom) && Number.isNaN(faultEnd) ? " (fault on)" : ""}`,
                ),
              settleMs: p.catchUpTimeoutMs,
            })
            await fault
            const committed = load.committed
            const deadline = performance.now() + p.catchUpTimeoutMs
            while (delivered < committed && performance.now() < deadline) {
              status(`catching up: ${delivered}/${committed}`)
              await sleep(10)
            }
            let lost = 0
            let catchUpAt = faultEnd
            let committedBeforeEnd = 0
            for (let seq = 0; seq < load.planned; seq++) {
              const c = committedAt[seq] as number
              if (Number.isNaN(c)) continue
              const d = deliveredAt[seq] as number
              if (Number.isNaN(d)) {
                lost++
                continue
              }
              if (c <= faultEnd) {
                committedBeforeEnd++
                if (d > catchUpAt) catchUpAt = d
              }
            }
            const flags: string[] = []
            if (lost > 0) flags.push("lost-events")
            if (load.errors > 0) flags.push("send-errors")
            const b = before.summary()
            const a = all.summary()
            return {
              metrics: {
                committed,
                delivered,
                lost,
                duplicates,
                committedBeforeFaultEnd: committedBeforeEnd,
                catchUpMs: lost > 0 ? Number.NaN : catchUpAt - faultEnd,
                faultMs: faultEnd - faultFrom,
                faultActions: kills,
                p99BeforeFault: b.p99,
                p99: a.p99,
                max: a.max,
                sendErrors: load.errors,
              },
              flags,
              ...(load.firstError ? { notes: [load.firstError] } : {}),
            }
          } finally {
            await session.close()
          }
        },
      })
    }
    const result = await runInterleaved(arms, {
      blocks: p.blocks,
      warmupBlocks: 0,
      progress: ctx.progress,
      scenario: "recovery",
      aborted: ctx.aborted,
    })
    return {
      id: "recovery",
      title: recovery.title,
      method: [
        `Open loop at ${p.rate} events/s for ${p.beforeMs / 1000} s, then a ${p.outageMs / 1000} s fault while the load continues, then at least ${Math.max(2, p.outageMs / 1000)} s more; one subscriber.`,
        "Faults: postgres-notify — the bus's LISTEN connection is terminated with pg_terminate_backend every ~50 ms for the whole outage; redis-streams — the transport's live-read (`…-feed`) connections are killed with CLIENT KILL every ~50 ms; nats — the server is paused with SIGSTOP (NATS 2.9 cannot drop a single client from the server side without a system account). Producers keep committing to Postgres throughout.",
        "Catch-up time: from the end of the fault until the last event committed before the end of the fault has been delivered. Lost: committed events not delivered within the catch-up timeout. Duplicates: events delivered twice to the subscriber.",
      ],
      arms: result.arms,
      blocks: result.blocks,
      notes: [],
    }
  },
}
