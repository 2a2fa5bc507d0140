import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { type PostgresHandle, type ServerHandle, startNats, startPostgres, startRedis } from "@bus/test-infra"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

/**
 * A fleet of three application processes (separate OS processes running `src/fleet/app.ts`),
 * each producing, relaying and consuming through one Postgres outbox and one broker. One is
 * SIGKILLed mid-run; a fourth joins later. Asserted from outside the SDK: the relay
 * partitions as `bus.relay_partitions` shows them, and every event committed to the outbox
 * (read with a plain SQL query) as handled by the group members. Half the events are
 * published by the SQL function `bus.publish`, half by the SDK.
 */

const root = fileURLToPath(new URL("..", import.meta.url))
/** Lease of relay partitions and of group deliveries in the apps: the takeover bound. */
const leaseMs = 3_000
const partitions = 8

interface App {
  readonly name: string
  readonly child: ChildProcess
  readonly handled: Array<{ id: string; at: number }>
  readonly lines: Array<Record<string, unknown>>
  readonly exited: Promise<number | null>
  stderr: string
}

let postgres: PostgresHandle
let db: pg.Client
const apps: Array<App> = []

beforeAll(async () => {
  postgres = await startPostgres()
  db = new pg.Client({ connectionString: postgres.url })
  await db.connect()
})

afterAll(async () => {
  for (const app of apps)
    if (app.child.exitCode === null && app.child.signalCode === null) app.child.kill("SIGKILL")
  await Promise.all(apps.map((a) => a.exited))
  await db?.end()
  await postgres?.stop()
})

const startApp = (name: string, broker: string, brokerUrl: string, channel: string): App => {
  const child = spawn(process.execPath, ["--import", "tsx", "src/fleet/app.ts"], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: postgres.url,
      BUS_BROKER: broker,
      BROKER_URL: brokerUrl,
      FLEET_NAME: name,
      FLEET_CHANNEL: channel,
      FLEET_TENANTS: "12",
      FLEET_RATE: "40",
      FLEET_LEASE_MS: String(leaseMs),
    },
    stdio: ["ignore", "pipe", "pipe"],
  })
  const app: App = {
    name,
    child,
    handled: [],
    lines: [],
    stderr: "",
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  }
  let buffered = ""
  child.stdout!.on("data", (chunk: Buffer) => {
    buffered += chunk.toString()
    let nl = buffered.indexOf("\n")
    while (nl >= 0) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      nl = buffered.indexOf("\n")
      if (!line.startsWith("{")) continue
      const parsed = JSON.parse(line) as Record<string, unknown>
      if (parsed.kind === "handled") app.handled.push({ id: parsed.id as string, at: Date.now() })
      else app.lines.push(parsed)
    }
  })
  child.stderr!.on("data", (chunk: Buffer) => {
    app.stderr = (app.stderr + chunk.toString()).slice(-20_000)
  })
  apps.push(app)
  return app
}

const waitFor = async (
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  debug?: () => string,
) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${debug ? `: ${debug()}` : ""}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Owner of each partition whose lease is live, as the database shows it. */
const liveOwners = async (): Promise<Map<number, string>> => {
  const { rows } = await db.query<{ partition: number; owner: string }>(
    "SELECT partition, owner FROM bus.relay_partitions WHERE owner IS NOT NULL AND lease_until > now() ORDER BY partition",
  )
  return new Map(rows.map((r) => [r.partition, r.owner]))
}

const shares = (owners: Map<number, string>): Record<string, number> => {
  const counts: Record<string, number> = {}
  for (const owner of owners.values()) counts[owner] = (counts[owner] ?? 0) + 1
  return counts
}

const committedIds = async (channel: string): Promise<Array<string>> =>
  (await db.query<{ id: string }>("SELECT id::text FROM bus.outbox WHERE channel = $1", [channel])).rows.map(
    (r) => r.id,
  )

const stopApp = async (app: App) => {
  if (app.child.exitCode !== null || app.child.signalCode !== null) return
  app.child.kill("SIGTERM")
  const timer = setTimeout(() => app.child.kill("SIGKILL"), 20_000)
  await app.exited
  clearTimeout(timer)
}

const fleetRun = async (broker: "nats" | "redis-streams", server: ServerHandle) => {
  const channel = `fleet_${broker.replace("-", "_")}_${Date.now().toString(36)}`
  const run = ["a", "b", "c"].map((n) => startApp(`${broker}-${n}`, broker, server.url, channel))
  const [a, b, c] = run as [App, App, App]
  const debug = () =>
    run.map((x) => `${x.name}: ${JSON.stringify(x.lines)} ${x.stderr.slice(-2_000)}`).join("\n")
  await waitFor(
    "three apps ready",
    () => run.every((x) => x.lines.some((l) => l.kind === "ready")),
    60_000,
    debug,
  )

  // 1. The three share the partitions: 3 / 3 / 2.
  await waitFor(
    "partitions spread over the three",
    async () => {
      const counts = Object.values(shares(await liveOwners()))
      return (
        counts.length === 3 && counts.reduce((s, n) => s + n, 0) === partitions && Math.max(...counts) <= 3
      )
    },
    30_000,
    debug,
  )
  const spread = shares(await liveOwners())
  await waitFor("each app handling events", () => run.every((x) => x.handled.length > 0), 30_000, debug)

  // 2. SIGKILL one mid-run: its partitions and its group deliveries are taken over.
  await new Promise((r) => setTimeout(r, 2_000))
  const killedPartitions = [...(await liveOwners())].filter(([, o]) => o === c.name).map(([p]) => p)
  const killedAt = Date.now()
  c.child.kill("SIGKILL")
  await c.exited
  await waitFor(
    "the killed app's partitions owned by the others",
    async () => {
      const owners = await liveOwners()
      return killedPartitions.every((p) => owners.has(p) && owners.get(p) !== c.name)
    },
    30_000,
    debug,
  )
  const partitionTakeoverMs = Date.now() - killedAt

  // 3. A fourth app joins and takes a share.
  const d = startApp(`${broker}-d`, broker, server.url, channel)
  run.push(d)
  await waitFor("the fourth app ready", () => d.lines.some((l) => l.kind === "ready"), 60_000, debug)
  // From its bus being up (a cold `tsx` start on a loaded machine takes seconds of its own).
  const joinedAt = Date.now()
  await waitFor(
    "the fourth app holding partitions",
    async () => (shares(await liveOwners())[d.name] ?? 0) >= 2,
    30_000,
    debug,
  )
  const joinMs = Date.now() - joinedAt
  const spreadAfterJoin = shares(await liveOwners())

  // 4. Producers stop; every committed event is handled.
  for (const x of [a, b, d]) x.child.kill("SIGUSR2")
  await waitFor(
    "producers stopped",
    () => [a, b, d].every((x) => x.lines.some((l) => l.kind === "published")),
    30_000,
  )
  const committed = await committedIds(channel)
  const handledBy = new Map<string, Array<App>>()
  const count = () => {
    handledBy.clear()
    for (const x of run) for (const h of x.handled) handledBy.set(h.id, [...(handledBy.get(h.id) ?? []), x])
  }
  await waitFor(
    "every committed event handled",
    () => {
      count()
      return committed.every((id) => handledBy.has(id))
    },
    60_000,
    () => `${committed.filter((id) => !handledBy.has(id)).length} of ${committed.length} not handled`,
  )
  // A delivery the killed app was handling when it died is handled again by a live member:
  // at-least-once. Anything else handled twice is a duplicate.
  const killedHandled = new Set(c.handled.map((h) => h.id))
  const redeliveredAfterKill = [...handledBy].filter(
    ([id, by]) => by.length > 1 && killedHandled.has(id),
  ).length
  const duplicates = [...handledBy].filter(([, by]) => by.length > 1 && !by.includes(c)).length
  const lost = committed.filter((id) => !handledBy.has(id)).length
  // When the killed app's unacknowledged deliveries were handled again by the others.
  const groupTakeoverMs = Math.max(
    0,
    ...[a, b, d].flatMap((x) =>
      x.handled.filter((h) => killedHandled.has(h.id) && h.at > killedAt).map((h) => h.at - killedAt),
    ),
  )
  console.log(
    `fleet ${broker}: committed=${committed.length} lost=${lost} duplicates=${duplicates} redelivered-after-kill=${redeliveredAfterKill} ` +
      `spread=${JSON.stringify(spread)} partition-takeover=${partitionTakeoverMs}ms group-takeover=${groupTakeoverMs}ms join=${joinMs}ms spread-after-join=${JSON.stringify(spreadAfterJoin)} ` +
      `handled per app=${run.map((x) => `${x.name}:${x.handled.length}`).join(",")}`,
  )
  await Promise.all([a, b, d].map(stopApp))
  expect(lost).toBe(0)
  expect(duplicates).toBe(0)
  // The killed app was acking as it went: what it handled but could not ack is at most a
  // handful per tenant in flight, never its whole history.
  expect(redeliveredAfterKill).toBeLessThanOrEqual(24)
  expect(
    partitionTakeoverMs,
    "the killed app's partitions were taken over within lease + 2 s",
  ).toBeLessThanOrEqual(leaseMs + 2_000)
  expect(Math.max(...Object.values(spreadAfterJoin))).toBeLessThanOrEqual(3)
  expect(committed.length).toBeGreaterThan(100)
  const fromSql = await db.query(
    "SELECT count(*)::int AS n FROM bus.outbox WHERE channel = $1 AND data->>'from' = 'sql'",
    [channel],
  )
  expect(fromSql.rows[0].n, "events published with the SQL function").toBeGreaterThan(40)
}

describe("a fleet of three application processes", () => {
  it("on NATS: partitions spread, one SIGKILLed and taken over, a fourth joins; 0 lost, 0 duplicates", async () => {
    const nats = await startNats()
    try {
      await fleetRun("nats", nats)
    } finally {
      for (const app of apps)
        if (app.child.exitCode === null && app.child.signalCode === null) app.child.kill("SIGKILL")
      await Promise.all(apps.map((x) => x.exited))
      await nats.stop()
    }
  }, 240_000)

  it("on Redis: partitions spread, one SIGKILLed and taken over, a fourth joins; 0 lost, 0 duplicates", async () => {
    const redis = await startRedis()
    try {
      await fleetRun("redis-streams", redis)
    } finally {
      for (const app of apps)
        if (app.child.exitCode === null && app.child.signalCode === null) app.child.kill("SIGKILL")
      await Promise.all(apps.map((x) => x.exited))
      await redis.stop()
    }
  }, 240_000)
})
