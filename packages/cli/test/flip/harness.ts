import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type Bus, createBus, type DeliveredEvent } from "@bus/core"
import { postgresOutbox } from "@bus/postgres-notify"
import { Layer, References } from "effect"
import pg from "pg"
import { expect } from "vitest"

/**
 * The flip under load, across processes: `app.mjs` is the application (producers and a
 * consumer); this harness starts it phase after phase with a different configuration and
 * nothing else changed, then checks every subscriber and consumer group against the outbox.
 */

const app = fileURLToPath(new URL("./app.mjs", import.meta.url))
const cli = fileURLToPath(new URL("../../dist/bus.js", import.meta.url))

export interface Servers {
  readonly pg: string
  readonly redis?: string
  readonly nats?: string
}

/** One run of the application: its configuration (only `BUS_*` differs between phases). */
export interface Phase {
  readonly name: string
  /** The `BUS_*` variables of this phase. */
  readonly bus: Readonly<Record<string, string>>
  /** Events to commit in this phase before the flip (at least). */
  readonly events: number
}

export interface FlipOptions {
  readonly servers: Servers
  readonly phases: ReadonlyArray<Phase>
  readonly producers: number
  readonly addresses: number
  readonly groups: ReadonlyArray<string>
}

/** What one subscriber or group saw, per address. */
export interface Outcome {
  readonly consumer: string
  readonly committed: number
  readonly delivered: number
  readonly lost: number
  readonly duplicates: number
  /** Duplicates across each flip, in phase order (`p1→p2`, …). */
  readonly duplicatesAcross: ReadonlyArray<number>
  /** Events the broker held before the subscriber's last position in a broker phase that it never got. */
  readonly gaps: number
  /** Per flip: events committed before it that this consumer got only after it (it resumed mid-stream). */
  readonly carriedOver: ReadonlyArray<number>
}

export interface FlipReport {
  readonly committed: number
  readonly rolledBack: number
  readonly perPhase: ReadonlyArray<{ readonly name: string; readonly committed: number; readonly ms: number }>
  readonly subscribers: ReadonlyArray<Outcome>
  readonly groups: ReadonlyArray<Outcome>
  readonly uncommittedSeen: number
  readonly envDifferences: ReadonlyArray<string>
}

interface Running {
  readonly child: ChildProcess
  readonly exited: Promise<number | null>
  stdout: string
  stderr: string
}

const start = (role: string, env: Record<string, string>): Running => {
  const child = spawn(process.execPath, [app, role], { env, stdio: ["ignore", "pipe", "pipe"] })
  const running: Running = {
    child,
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
    stdout: "",
    stderr: "",
  }
  child.stdout!.on("data", (d: Buffer) => {
    running.stdout += d.toString()
  })
  child.stderr!.on("data", (d: Buffer) => {
    running.stderr += d.toString()
  })
  return running
}

const until = async (what: () => boolean | Promise<boolean>, timeoutMs: number, label: () => string) => {
  const deadline = Date.now() + timeoutMs
  while (!(await what())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${label()}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const stop = async (r: Running, what: string) => {
  r.child.kill("SIGTERM")
  const timer = setTimeout(() => r.child.kill("SIGKILL"), 30_000)
  const code = await r.exited
  clearTimeout(timer)
  if (code !== 0) throw new Error(`${what} exited with ${code}:\n${r.stderr.slice(-3000)}`)
}

const readLog = (file: string): Array<Record<string, unknown>> => {
  let text = ""
  try {
    text = readFileSync(file, "utf8")
  } catch {
    return []
  }
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}

/** Runs the phases and returns what every consumer saw. */
export const runFlip = async (o: FlipOptions): Promise<FlipReport> => {
  const dir = mkdtempSync(join(tmpdir(), "bus-flip-"))
  const admin = new pg.Pool({ connectionString: o.servers.pg, max: 2 })
  try {
    // The operator migrates with the CLI, as a user would.
    await new Promise<void>((resolve, reject) => {
      const m = spawn(process.execPath, [cli, "migrate", "--url", o.servers.pg], { stdio: "pipe" })
      let err = ""
      m.stderr.on("data", (d: Buffer) => {
        err += d.toString()
      })
      m.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`bus migrate: ${err}`))))
    })
    await admin.query(
      "CREATE TABLE IF NOT EXISTS flip_orders (id bigserial PRIMARY KEY, producer text NOT NULL)",
    )
    const addresses = Array.from({ length: o.addresses }, (_, i) => ({
      tenant: "acme",
      channel: `orders${i}`,
    }))
    const base: Record<string, string> = {
      PATH: process.env.PATH ?? "",
      DATABASE_URL: o.servers.pg,
      FLIP_ADDRESSES: JSON.stringify(addresses),
      FLIP_GROUPS: JSON.stringify(o.groups),
      FLIP_STATE: join(dir, "consumer-state.json"),
      ...(o.servers.redis ? { REDIS_URL: o.servers.redis } : {}),
      ...(o.servers.nats ? { NATS_URL: o.servers.nats } : {}),
    }
    const outboxCount = async () =>
      Number((await admin.query("SELECT count(*)::int AS n FROM bus.outbox")).rows[0].n)
    const perPhase: Array<{ name: string; committed: number; ms: number }> = []
    const consumerLogs: Array<string> = []
    const producerLogs: Array<string> = []
    const envs: Array<Record<string, string>> = []
    for (const [index, phase] of o.phases.entries()) {
      const t0 = Date.now()
      const last = index === o.phases.length - 1
      const env = { ...base, ...phase.bus }
      envs.push(env)
      const consumerLog = join(dir, `consumer-${index}.ndjson`)
      consumerLogs.push(consumerLog)
      const consumer = start("consumer", { ...env, FLIP_LOG: consumerLog })
      await until(
        () => consumer.stdout.includes("ready"),
        60_000,
        () => `the consumer of ${phase.name} to start: ${consumer.stderr.slice(-2000)}`,
      )
      const before = await outboxCount()
      const producers = Array.from({ length: o.producers }, (_, p) => {
        const file = join(dir, `producer-${index}-${p}.ndjson`)
        producerLogs.push(file)
        return start("producer", { ...env, FLIP_LOG: file, FLIP_NAME: `p${index}.${p}` })
      })
      await until(
        async () => (await outboxCount()) - before >= phase.events,
        90_000,
        () => `${phase.events} events in ${phase.name}`,
      )
      if (!last) {
        // The flip: every process stops (the consumer mid-stream, wherever it is) and the next
        // phase starts them again with the new configuration.
        await Promise.all([...producers.map((p, i) => stop(p, `producer ${i}`)), stop(consumer, "consumer")])
      } else {
        await Promise.all(producers.map((p, i) => stop(p, `producer ${i}`)))
        // The last phase drains: everything committed reaches every subscriber and group.
        const total = await outboxCount()
        await until(
          () => {
            const seen = new Map<string, Set<string>>()
            for (const file of consumerLogs) {
              for (const r of readLog(file)) {
                const key =
                  typeof r.sub === "string"
                    ? `sub:${r.sub}`
                    : typeof r.group === "string"
                      ? `g:${r.group}`
                      : undefined
                if (key === undefined || typeof r.id !== "string") continue
                const set = seen.get(key) ?? new Set<string>()
                seen.set(key, set)
                set.add(r.id)
              }
            }
            const subs = [...seen].filter(([k]) => k.startsWith("sub:")).reduce((n, [, s]) => n + s.size, 0)
            const handled = [...seen].filter(([k]) => k.startsWith("g:")).reduce((n, [, s]) => n + s.size, 0)
            return subs >= total && handled >= total * o.groups.length
          },
          90_000,
          () => "every subscriber and group to drain",
        )
        await stop(consumer, "consumer")
      }
      perPhase.push({ name: phase.name, committed: (await outboxCount()) - before, ms: Date.now() - t0 })
    }

    // The source of truth, and what each broker holds (in its own order).
    const rows = (await admin.query("SELECT id::text, channel FROM bus.outbox")).rows as Array<{
      id: string
      channel: string
    }>
    const committedBy = new Map<string, Set<string>>()
    for (const r of rows) {
      const key = `acme/${r.channel}`
      const set = committedBy.get(key) ?? new Set<string>()
      committedBy.set(key, set)
      set.add(r.id)
    }
    const rolledBack = new Set<string>()
    let producerCommitted = 0
    const phaseOf = new Map<string, number>()
    for (const file of producerLogs) {
      const phase = Number(/producer-(\d+)-/.exec(file)![1])
      for (const r of readLog(file)) {
        if (Array.isArray(r.rolledBack)) for (const id of r.rolledBack) rolledBack.add(String(id))
        if (Array.isArray(r.committed)) {
          producerCommitted += r.committed.length
          for (const id of r.committed) phaseOf.set(String(id), phase)
        }
      }
    }
    if (producerCommitted !== rows.length) {
      throw new Error(
        `producers logged ${producerCommitted} committed events, the outbox holds ${rows.length}`,
      )
    }
    const brokerOrder = new Map<string, Map<string, Array<string>>>()
    for (const transport of new Set(o.phases.map((p) => brokerOf(p.bus)).filter((t) => t !== undefined))) {
      brokerOrder.set(transport, await readBroker(o.servers, transport, addresses, admin))
    }

    // Each phase's deliveries, per consumer.
    const phaseSubs = consumerLogs.map((file) => {
      const byKey = new Map<string, Array<string>>()
      for (const r of readLog(file)) {
        if (r.fatal !== undefined) throw new Error(`consumer failed: ${String(r.fatal)}`)
        const key =
          typeof r.sub === "string"
            ? `sub:${r.sub}`
            : typeof r.group === "string"
              ? `group:${r.group}:${String(r.address)}`
              : undefined
        if (key === undefined || typeof r.id !== "string") continue
        const list = byKey.get(key) ?? []
        list.push(r.id)
        byKey.set(key, list)
      }
      return byKey
    })
    let uncommittedSeen = 0
    const outcome = (key: string, address: string): Outcome => {
      const committed = committedBy.get(address) ?? new Set<string>()
      const lists = phaseSubs.map((p) => p.get(key) ?? [])
      const all = lists.flat()
      const counts = new Map<string, number>()
      for (const id of all) counts.set(id, (counts.get(id) ?? 0) + 1)
      for (const id of counts.keys()) if (rolledBack.has(id) || !committed.has(id)) uncommittedSeen++
      const duplicatesAcross = lists.slice(1).map((list, i) => {
        const before = new Set(lists[i])
        return list.filter((id) => before.has(id)).length
      })
      // In a broker phase, everything the broker held up to the last event delivered must
      // have been delivered by then (in that phase or before it).
      let gaps = 0
      if (key.startsWith("sub:")) {
        for (const [i, list] of lists.entries()) {
          const broker = brokerOf(o.phases[i]!.bus)
          if (broker === undefined || list.length === 0) continue
          const order = brokerOrder.get(broker)?.get(address) ?? []
          const lastAt = order.lastIndexOf(list[list.length - 1]!)
          const seen = new Set(lists.slice(0, i + 1).flat())
          for (let k = 0; k <= lastAt; k++) if (!seen.has(order[k]!)) gaps++
        }
      }
      const carriedOver = lists.slice(1).map(
        (_, i) =>
          lists
            .slice(i + 1)
            .flat()
            .filter((id) => (phaseOf.get(id) ?? Infinity) <= i).length,
      )
      return {
        carriedOver,
        consumer: key.startsWith("sub:") ? `subscriber ${address}` : `group ${key.split(":")[1]} ${address}`,
        committed: committed.size,
        delivered: counts.size,
        lost: [...committed].filter((id) => !counts.has(id)).length,
        duplicates: all.length - counts.size,
        duplicatesAcross,
        gaps,
      }
    }
    const keys = addresses.map((a) => `acme/${a.channel}`)
    const subscribers = keys.map((k) => outcome(`sub:${k}`, k))
    const groups = keys.flatMap((k) => o.groups.map((g) => outcome(`group:${g}:${k}`, k)))
    // Only BUS_* may differ between the runs; code and every other setting stay the same.
    const envDifferences = new Set<string>()
    for (const env of envs.slice(1)) {
      for (const k of new Set([...Object.keys(env), ...Object.keys(envs[0]!)])) {
        if (env[k] !== envs[0]![k]) envDifferences.add(k)
      }
    }
    return {
      committed: rows.length,
      rolledBack: rolledBack.size,
      perPhase,
      subscribers,
      groups,
      uncommittedSeen,
      envDifferences: [...envDifferences].sort(),
    }
  } finally {
    await admin.end().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The broker a phase's configuration selects, if any. */
const brokerOf = (bus: Readonly<Record<string, string>>): "nats" | "redis-streams" | undefined => {
  const t = bus.BUS_TRANSPORT
  if (t === "nats" || t === "redis-streams") return t
  if (
    (t === undefined || t === "auto") &&
    Number(bus.BUS_NOTIFY_RATE ?? 0) >= Number(bus.BUS_NOTIFY_RATE_THRESHOLD ?? 1000)
  ) {
    const b = bus.BUS_BROKER
    return b === "nats" || b === "redis-streams" ? b : undefined
  }
  return undefined
}

/** Every event each address's stream holds on `transport`, in the broker's order (no relay runs). */
const readBroker = async (
  servers: Servers,
  transport: "nats" | "redis-streams",
  addresses: ReadonlyArray<{ tenant: string; channel: string }>,
  admin: pg.Pool,
): Promise<Map<string, Array<string>>> => {
  const broker =
    transport === "redis-streams"
      ? (await import("@bus/redis-streams")).redisStreams({ url: servers.redis! })
      : (await import("@bus/nats")).nats({ servers: servers.nats! })
  const bus: Bus = await createBus({
    outbox: postgresOutbox({ connectionString: servers.pg, pressure: false, listen: false }),
    transport: { use: transport, broker },
    env: false,
    relay: false,
    telemetry: Layer.succeed(References.MinimumLogLevel, "None") as Layer.Layer<never>,
  })
  const out = new Map<string, Array<string>>()
  try {
    for (const a of addresses) {
      // Rows the relay's stored position of the address's partition covers (schema v4: rows
      // visible in the partition's covered snapshot; forwarded_at only for rows a v3 relay
      // sent): all of them are on the broker.
      const covered = Number(
        (
          await admin.query(
            `SELECT count(*)::int AS n FROM bus.outbox o
             JOIN bus.relay_partitions rp
               ON rp.partition = bus.relay_partition(o.tenant, o.channel, (SELECT m.relay_partitions FROM bus.meta m))
             WHERE o.tenant = $1 AND o.channel = $2
               AND (o.forwarded_at IS NOT NULL OR pg_visible_in_snapshot(o.xid, rp.covered))`,
            [a.tenant, a.channel],
          )
        ).rows[0].n,
      )
      // A relay may have sent more than its stored position says (a batch whose position it
      // did not store, rows a fairness round sent ahead): read on until the stream is quiet.
      const ids: Array<string> = []
      const sub = bus.subscribe({ ...a, from: "beginning" })
      let timer = setTimeout(() => void sub.close(), covered > 0 ? 30_000 : 1_000)
      for await (const e of sub as AsyncIterable<DeliveredEvent>) {
        ids.push(e.id)
        if (ids.length >= covered) {
          clearTimeout(timer)
          timer = setTimeout(() => void sub.close(), 1_000)
        }
      }
      clearTimeout(timer)
      out.set(`${a.tenant}/${a.channel}`, ids)
    }
  } finally {
    await bus.close()
  }
  return out
}

/** One line per consumer, for the test output. */
export const describeReport = (r: FlipReport): string =>
  [
    `flip: ${r.committed} events committed (${r.rolledBack} rolled back) in ${r.perPhase.map((p) => `${p.name} ${p.committed} (${(p.ms / 1000).toFixed(1)} s)`).join(", ")}`,
    ...[...r.subscribers, ...r.groups].map(
      (o) =>
        `  ${o.consumer.padEnd(32)} sent=${o.committed} delivered=${o.delivered} lost=${o.lost} duplicates=${o.duplicates} (across flips: ${o.duplicatesAcross.join("/")}) gaps=${o.gaps} resumed-behind=${o.carriedOver.join("/")}`,
    ),
  ].join("\n")

/**
 * What every flip must show, whichever broker: only `changedVariable` differs between the
 * runs, ≥ 10,000 events committed, nothing rolled back seen, no subscriber event lost or
 * skipped, no repeat into the broker (the outbox cursor is exact there), only the repeats
 * the broker's frontier allows on the way back (docs/flip.md), and no group loss or repeat.
 */
export const expectFlipGuarantees = (report: FlipReport, changedVariable: string): void => {
  expect(report.envDifferences).toEqual([changedVariable])
  expect(report.committed).toBeGreaterThanOrEqual(10_000)
  expect(report.uncommittedSeen).toBe(0)
  for (const s of report.subscribers) {
    expect(s.lost, s.consumer).toBe(0)
    expect(s.gaps, s.consumer).toBe(0)
    expect(s.duplicatesAcross[0], s.consumer).toBe(0)
    expect(s.duplicates, s.consumer).toBe(s.duplicatesAcross.reduce((a, b) => a + b, 0))
  }
  for (const g of report.groups) {
    expect(g.lost, g.consumer).toBe(0)
    expect(g.duplicates, g.consumer).toBe(0)
  }
}
