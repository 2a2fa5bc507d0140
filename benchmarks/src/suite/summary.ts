/**
 * The report's cross-scenario parts: the headline figures and the issue targets, each
 * read from several scenarios' results.
 */
import { fmtMs, fmtNum } from "../harness/progress.js"
import type { RunResult } from "../harness/types.js"
import { fmtInt, fmtRatio, med, ok, pipeName, verdict } from "../report/format.js"
import type { RelayDerived } from "../scenarios/relay/report.js"

/**
 * The targets of issue 12 ("the flip must pay"), each beside the figure measured in this
 * run, met or not. A figure the run did not measure says so.
 */
export const issueTargets = (run: RunResult): string[] => {
  const sc = (id: string) => run.scenarios.find((s) => s.id === id)
  const out: string[] = ["### Issue targets: the flip pays", ""]
  const fin = (n: number) => Number.isFinite(n)

  // 1. Knee: relay never behind up to C=32; broker path ≥ 0.9× the no-NOTIFY commit rate at C=8,16,32.
  const knee = sc("knee")
  if (knee === undefined) {
    out.push(
      "- Relay never behind in the knee scenario up to C=32: **not measured** (knee not run).",
      "- Broker path end-to-end ≥ 0.9× the no-NOTIFY commit rate (events) at C=8, 16, 32: **not measured** (knee not run).",
    )
  } else {
    const kneeArms = ok(knee.arms)
    const broker = kneeArms.filter((a) => a.variant === "broker-relay" && Number(a.params.concurrency) <= 32)
    const behindFlag = (f: string) => /relay|behind|backlog/i.test(f)
    const behindAt = broker.filter((a) => a.flags.some(behindFlag)).map((a) => Number(a.params.concurrency))
    const cs = broker.map((a) => Number(a.params.concurrency)).sort((a, b) => a - b)
    const upTo32 = cs.includes(32)
    out.push(
      broker.length === 0
        ? "- Relay never behind in the knee scenario up to C=32: **not measured** (no broker-relay arm)."
        : `- Relay never behind in the knee scenario up to C=32: measured at C=${cs.join(", ")}; behind at ${behindAt.length > 0 ? `C=${behindAt.join(", ")}` : "none"} → ${behindAt.length > 0 ? verdict(false) : upTo32 ? verdict(true) : "**not measured up to C=32** (none behind where measured)"}.`,
    )
    const parts: string[] = []
    let all: boolean | undefined = true
    for (const c of [8, 16, 32]) {
      const b = broker.find((a) => Number(a.params.concurrency) === c)
      const nn = kneeArms.find((a) => a.variant === "no-notify" && Number(a.params.concurrency) === c)
      const deliveredKey =
        b?.metrics.deliveredPerSec !== undefined ? "deliveredPerSec" : "relayForwardedPerSec"
      const got = med(b, deliveredKey)
      const ref = med(nn, "eventsPerSec")
      if (!fin(got) || !fin(ref)) {
        parts.push(`C=${c} not measured`)
        all = undefined
        continue
      }
      const r = got / ref
      parts.push(
        `C=${c} ${fmtInt(got)} ${deliveredKey === "deliveredPerSec" ? "delivered" : "forwarded to the broker"} vs ${fmtInt(ref)} no-NOTIFY events/s = ${fmtRatio(r)}`,
      )
      if (all !== undefined && r < 0.9) all = false
    }
    out.push(
      `- Broker path end-to-end delivered events/s ≥ 0.9× the no-NOTIFY commit rate (events) at C=8, 16, 32: ${parts.join("; ")} → ${verdict(all)}.`,
    )
  }

  // 2. Backlog drain and quiet event (relay scenario).
  const rel = sc("relay")?.derived as RelayDerived | undefined
  const brokers = Object.entries(rel?.brokers ?? {})
  if (brokers.length === 0) {
    out.push(
      "- Relay forwarding a 100,000-event backlog ≥ 10,000 events/s, flat in backlog size: **not measured** (relay scenario not run).",
      "- Quiet event forwarded within one relay round (< 1 s) during the drain: **not measured** (relay scenario not run).",
    )
  } else {
    const parts = brokers.map(([t, b]) => {
      const largest = b.largestBacklog ?? Number.NaN
      const met = fin(b.rateAtLargest) && largest >= 100_000 ? b.rateAtLargest >= 10_000 : undefined
      const flat = fin(b.flatness) ? b.flatness <= 0.2 : undefined
      return `${t}: ${Object.entries(b.rates)
        .map(([n, r]) => `${fmtInt(Number(n))} → ${fmtInt(r)}/s`)
        .join(
          ", ",
        )} (largest deviation from the median ${fin(b.flatness) ? `${Math.round(b.flatness * 100)} %` : "–"}) → rate ${largest >= 100_000 ? verdict(met) : `**not measured at 100,000** (largest backlog ${fmtInt(largest)})`}, flat ${verdict(flat)}`
    })
    out.push(
      `- Relay forwarding a 100,000-event backlog ≥ 10,000 events/s, flat in backlog size (±20 %): ${parts.join("; ")}.`,
    )
    const quiet = brokers.map(([t, b]) => {
      const met = fin(b.quietDuringDrainMaxMs) ? b.quietDuringDrainMaxMs < 1_000 : undefined
      return `${t} committed mid-drain ${fmtMs(b.quietDuringDrainMaxMs)} (worst block), preloaded ${fmtMs(b.quietPreloadedMaxMs)} from the relay's start → ${fin(b.quietDuringDrainMaxMs) ? verdict(met) : "**not met** (not forwarded within the drain timeout)"}`
    })
    out.push(`- Quiet event forwarded within one relay round (< 1 s) during the drain: ${quiet.join("; ")}.`)
  }

  // 3. Latency at 1,000 and 5,000 events/s (latency scenario).
  const lat = sc("latency")
  if (lat === undefined) {
    out.push(
      "- Commit → handler p99 at 1,000 events/s ≤ 10 ms on NATS and Redis: **not measured** (latency not run).",
      "- No saturation at 5,000 events/s on NATS and Redis: **not measured** (latency not run).",
    )
  } else {
    const sdkAt = (t: string, rate: number) =>
      ok(lat.arms).find((a) => a.variant === "sdk" && pipeName(a) === t && Number(a.params.rate) === rate)
    const p99 = ["nats", "redis-streams"].map((t) => {
      const a = sdkAt(t, 1_000)
      return a === undefined
        ? `${t} not measured`
        : `${t} ${fmtMs(med(a, "p99"))} → ${verdict(med(a, "p99") <= 10)}`
    })
    out.push(`- Commit → handler p99 at 1,000 events/s ≤ 10 ms: ${p99.join("; ")}.`)
    const sat = ["nats", "redis-streams"].map((t) => {
      const a = sdkAt(t, 5_000)
      return a === undefined
        ? `${t} not measured`
        : `${t} p99 ${fmtMs(med(a, "p99"))}, ${a.saturatedBlocks}/${a.blocks} blocks saturated${a.flags.length > 0 ? ` (${a.flags.join(", ")})` : ""} → ${verdict(a.saturatedBlocks === 0)}`
    })
    out.push(`- No saturation at 5,000 events/s: ${sat.join("; ")}.`)
  }

  // 4. Postgres CPU per event, broker path ÷ INSERT alone (relay scenario).
  if (brokers.length === 0) {
    out.push(
      "- Postgres CPU per event on the broker path ≤ 1.2× the producer's INSERT alone: **not measured**.",
    )
  } else {
    const parts = brokers.map(
      ([t, b]) =>
        `${t} ${fmtNum(b.pathPgUsPerEvent)} vs ${fmtNum(b.insertPgUsPerEvent)} µs/event (net of idle background) = ${fmtRatio(b.cpuRatio)}${b.cpuRatioGross !== undefined ? ` (gross ${fmtRatio(b.cpuRatioGross)})` : ""} → ${verdict(fin(b.cpuRatio) ? b.cpuRatio <= 1.2 : undefined)}`,
    )
    out.push(
      `- Postgres CPU per event on the broker path ≤ 1.2× the producer's INSERT alone: ${parts.join("; ")}.`,
    )
  }
  if (run.quick)
    out.push("", "_Quick run: short blocks; these verdicts are a smoke test, not the measurement._")
  return out
}

export const headlines = (run: RunResult): string[] => {
  const out: string[] = []
  const sc = (id: string) => run.scenarios.find((s) => s.id === id)
  const tp = sc("throughput")?.derived?.ratios as
    | Record<string, { throughputRatio: number; sdkPerSec: number; rawPerSec: number }>
    | undefined
  if (tp && Object.keys(tp).length > 0) {
    out.push(
      `- Throughput SDK ÷ raw client: ${Object.entries(tp)
        .map(
          ([t, r]) =>
            `${t} ${fmtRatio(r.throughputRatio)} (${fmtInt(r.sdkPerSec)} vs ${fmtInt(r.rawPerSec)} events/s)`,
        )
        .join("; ")}.`,
    )
  }
  const lat = sc("latency")
  if (lat) {
    const at = (run.profile.latencyRates as number[] | undefined)?.[1] ?? 1000
    const parts = ok(lat.arms)
      .filter((a) => a.variant === "sdk" && Number(a.params.rate) === at)
      .map(
        (a) =>
          `${pipeName(a)} p50 ${fmtMs(med(a, "p50"))} / p99 ${fmtMs(med(a, "p99"))}${a.saturatedBlocks > 0 ? " ⚠" : ""}`,
      )
    if (parts.length > 0)
      out.push(`- Latency at ${at.toLocaleString("en")} events/s (open loop): ${parts.join("; ")}.`)
  }
  const knee = sc("knee")?.derived as
    | {
        knees?: Record<string, number | null>
        flip?: { concurrency: number; notifyingCommitsPerSec: number; gain: number; against: string } | null
      }
    | undefined
  if (knee?.knees) {
    const k = knee.knees
    out.push(
      `- Commit-lock knee: coalesced NOTIFY ${k.coalesced ? `C=${k.coalesced}` : "none in range"}, per-row trigger ${k["trigger-per-row"] ? `C=${k["trigger-per-row"]}` : "none in range"}, no NOTIFY ${k["no-notify"] ? `C=${k["no-notify"]}` : "none in range"}${knee.flip ? `; the flip pays from C=${knee.flip.concurrency} (${fmtInt(knee.flip.notifyingCommitsPerSec)} notifying commits/s; ${knee.flip.against === "broker-relay" ? "the broker path" : "commits without NOTIFY"} ${fmtRatio(knee.flip.gain)})` : ""}.`,
    )
  }
  const db = sc("dbload")
  if (db) {
    const idle = ok(db.arms).filter((a) => a.params.mode === "idle")
    const parts = idle.map(
      (a) => `${a.label.replace(/ \(SDK.*?\)/, "")}: ${fmtNum(med(a, "queriesPerMin"))}/min`,
    )
    if (parts.length > 0) out.push(`- Idle database load: ${parts.join("; ")}.`)
  }
  const rec = sc("recovery")
  if (rec) {
    const parts = ok(rec.arms).map(
      (a) =>
        `${pipeName(a)} lost ${fmtInt(a.metrics.lost?.max ?? Number.NaN)}, caught up in ${fmtMs(med(a, "catchUpMs"))}`,
    )
    if (parts.length > 0) out.push(`- Recovery: ${parts.join("; ")}.`)
  }
  return out
}
