import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { type Bus, createBus } from "@bus/core"
import { OutboxRelay } from "@bus/core/adapter"
import { postgresOutbox } from "@bus/postgres-notify"
import { latestVersion } from "@bus/postgres-notify/adapter"
import { redisStreams } from "@bus/redis-streams"
import { type PostgresHandle, type ServerHandle, startPostgres, startRedis } from "@bus/test-infra"
import { Layer as L, type Layer, type ManagedRuntime, References } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { collectStatus } from "../src/status.js"

/**
 * The `bus` command as a user runs it: a child process against a real Postgres (and Redis).
 */

const bin = fileURLToPath(new URL("../dist/bus.js", import.meta.url))
// biome-ignore lint/suspicious/noControlCharactersInRegex: looks for colour codes
const ansi = /\u001b\[/

let postgres: PostgresHandle
let redis: ServerHandle

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const bus = (
  args: ReadonlyArray<string>,
  env: Record<string, string> = {},
  timeoutMs = 30_000,
  /** Called with everything written to stderr so far, as it arrives. */
  onStderr?: (stderr: string) => void,
): Promise<Result> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: { PATH: process.env.PATH ?? "", DATABASE_URL: postgres.url, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString()
    })
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString()
      onStderr?.(stderr)
    })
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`bus ${args.join(" ")} did not finish in ${timeoutMs} ms: ${stderr}`))
    }, timeoutMs)
    child.once("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

const quiet = L.succeed(References.MinimumLogLevel, "None") as Layer.Layer<never>

/** An application bus on `transport`, as the app would build it. */
const appBus = (
  transport: "postgres-notify" | "redis-streams",
  schema = "bus",
  relay: { readonly maxIdleMs: number } | false = { maxIdleMs: 50 },
): Promise<Bus> => {
  return createBus({
    outbox: postgresOutbox({ connectionString: postgres.url, schema, pressure: false }),
    transport: { use: transport, broker: redisStreams({ url: redis.url }) },
    env: false,
    relay,
    telemetry: quiet,
  })
}

const publish = async (b: Bus, n: number, channel = "orders", tenant = "acme") => {
  const client = new pg.Client({ connectionString: postgres.url })
  await client.connect()
  try {
    const ids: Array<string> = []
    for (let i = 0; i < n; i++) {
      await client.query("BEGIN")
      ids.push(...(await b.publish(client, { tenant, channel, type: "order.paid", data: { i } })).ids)
      await client.query("COMMIT")
    }
    return ids
  } finally {
    await client.end()
  }
}

beforeAll(async () => {
  ;[postgres, redis] = await Promise.all([startPostgres(), startRedis()])
})

afterAll(async () => {
  await Promise.all([postgres?.stop(), redis?.stop()])
})

describe("bus migrate", () => {
  it("says what to do before the schema exists, then applies it once", async () => {
    const before = await bus(["status"])
    expect(before.code).toBe(1)
    expect(before.stderr).toMatch(/no schema "bus".*bus migrate/)
    const tailBefore = await bus(["tail", "acme", "orders"])
    expect(tailBefore.code).toBe(1)
    expect(tailBefore.stderr).toMatch(/bus migrate/)

    const first = await bus(["migrate"])
    expect(first.code).toBe(0)
    const all = Array.from({ length: latestVersion }, (_, i) => i + 1).join(", ")
    expect(first.stdout).toContain(`applied ${all}; now at version ${latestVersion}`)
    expect(first.stdout).not.toContain(new URL(postgres.url).password)
    const again = await bus(["migrate", "--json"])
    expect(JSON.parse(again.stdout)).toMatchObject({ schema: "bus", applied: [], version: latestVersion })
  })

  it("explains bad URLs and unreachable or refusing servers", async () => {
    const u = new URL(postgres.url)
    const cases: Array<[Array<string>, number, RegExp]> = [
      [["status", "--url", "not a url"], 2, /not a database URL/],
      [["status", "--url", "mysql://root@localhost/db"], 2, /not a Postgres URL/],
      [
        ["migrate", "--url", "postgres://bus:x@127.0.0.1:1/db"],
        1,
        /cannot reach Postgres at 127\.0\.0\.1:1\/db: connection refused/,
      ],
      [
        ["status", "--url", `postgres://bus:wrong@${u.host}/bus_test`],
        1,
        /refused the login: password authentication failed/,
      ],
      [
        ["status", "--url", `postgres://bus:${u.password}@${u.host}/nope`],
        1,
        /database "nope" does not exist/,
      ],
      [["status", "--url", "postgres://bus@host.invalid/db"], 1, /host name does not resolve/],
      [["status", "--schema", "Robert'); DROP"], 2, /schema must match/],
      [["frob"], 2, /unknown command "frob"/],
    ]
    for (const [args, code, message] of cases) {
      const r = await bus(args, { DATABASE_URL: "" })
      expect(r.code, args.join(" ")).toBe(code)
      expect(r.stderr, args.join(" ")).toMatch(message)
      expect(r.stderr).not.toContain("wrong@")
    }
    const none = await bus(["status"], { DATABASE_URL: "" })
    expect(none.code).toBe(2)
    expect(none.stderr).toMatch(/no database URL: pass --url .* or set DATABASE_URL/)
  })
})

describe("bus status", () => {
  it("reports the running transport, NOTIFY health and pressure, groups, and a recommendation", async () => {
    const app = await appBus("postgres-notify")
    const handled: Array<string> = []
    const consumer = app.consume({ tenant: "acme", channel: "status", group: "mailer" }, (e) => {
      handled.push(e.id)
    })
    try {
      const ids = await publish(app, 40, "status")
      while (handled.length < ids.length) await new Promise((r) => setTimeout(r, 20))
      const json = await bus(["status", "--json"])
      expect(json.code, json.stderr).toBe(0)
      const report = JSON.parse(json.stdout)
      expect(report.schema).toMatchObject({ name: "bus", version: latestVersion, expected: latestVersion })
      expect(report.transport.configured).toMatchObject({ transport: "postgres-notify" })
      expect(report.transport.running).toEqual(
        expect.arrayContaining([expect.objectContaining({ transport: "postgres-notify" })]),
      )
      expect(report.transport.listeners).toBeGreaterThanOrEqual(1)
      expect(report.notify.state).toBe("healthy")
      expect(report.pressure.notifyingCommitsPerSecond).toBeGreaterThan(0)
      expect(report.pressure.threshold).toBe(1000)
      expect(report.pressure.notifyCommitLockWaits).toBe(0)
      expect(report.groups).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ channel: "status", group: "mailer", position: "outbox", held: true }),
        ]),
      )
      expect(report.recommendation).toMatchObject({ transport: "postgres-notify", level: "ok" })

      // A threshold the measured rate passes: the recommendation is the broker.
      const over = JSON.parse(
        (await bus(["status", "--json", "--threshold", "1"], { BUS_BROKER: "redis-streams" })).stdout,
      )
      expect(over.recommendation).toMatchObject({ transport: "redis-streams", level: "act" })

      // Human output: a table, plain when piped, coloured when asked for.
      const human = await bus(["status"])
      expect(human.stdout).toMatch(/notifying commits\/s/)
      expect(human.stdout).toMatch(/self-probe\s+healthy/)
      expect(human.stdout).toMatch(/recommended: postgres-notify/)
      expect(human.stdout).not.toMatch(ansi)
      expect((await bus(["status"], { FORCE_COLOR: "1" })).stdout).toMatch(ansi)
    } finally {
      await consumer.close()
      await app.close()
    }
  })

  it("reports LISTEN backends that went silent (the server side of a half-open connection) as degraded", async () => {
    // A backend that LISTENs and then hears nothing from its client, as when a NAT dropped
    // the flow: a live bus listener would run its heartbeat statement every 5 s.
    const zombie = new pg.Client({ connectionString: postgres.url, application_name: "bus-listener" })
    zombie.on("error", () => {})
    await zombie.connect()
    try {
      await zombie.query("LISTEN bus_status_zombie")
      await new Promise((r) => setTimeout(r, 1_500))
      const report = await collectStatus({
        url: postgres.url,
        schema: "bus",
        windowSeconds: 1,
        env: {},
        brokers: {},
        silentListenerSeconds: 1,
      })
      expect(report.notify.silentListeners).toBeGreaterThanOrEqual(1)
      expect(report.notify.longestSilenceSeconds).toBeGreaterThanOrEqual(1)
      expect(report.notify.state).toBe("degraded")
      expect(report.notify.reason).toMatch(/silent/)
      expect(report.recommendation.level).toBe("check")
      // With the default threshold (30 s) the same backend is not silent yet.
      const fresh = await collectStatus({
        url: postgres.url,
        schema: "bus",
        windowSeconds: 1,
        env: {},
        brokers: {},
      })
      expect(fresh.notify.silentListeners).toBe(0)
    } finally {
      await zombie.end()
    }
  })

  it("on a broker: shows it running, the relay lag, who holds the relay partitions, and the broker's dead letters", async () => {
    // The bus's runtime type names only the services every outbox has; a broker bus has the relay log too.
    const backlog = (b: Bus) =>
      (b.runtime as unknown as ManagedRuntime.ManagedRuntime<OutboxRelay, never>).runPromise(
        OutboxRelay.use((s) => s.backlog),
      )
    const brokerEnv = { BUS_TRANSPORT: "redis-streams", REDIS_URL: redis.url }
    const app = await appBus("redis-streams")
    try {
      const ids = await publish(app, 10, "relayed")
      expect(ids).toHaveLength(10)
      // The relay forwards everything (the earlier tests' rows too), then status shows it caught up.
      const deadline = Date.now() + 20_000
      while ((await backlog(app)) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      expect(await backlog(app)).toBe(0)
      const r = await bus(["status", "--json"], brokerEnv)
      expect(r.code, r.stderr).toBe(0)
      const report = JSON.parse(r.stdout)
      expect(report.transport.configured).toMatchObject({ transport: "redis-streams" })
      expect(report.transport.running).toEqual(
        expect.arrayContaining([expect.objectContaining({ transport: "redis-streams" })]),
      )
      expect(report.outbox).toMatchObject({ unforwarded: 0, unforwardedCapped: false, relayLagMs: 0 })
      expect(report.deadLetters.broker).toMatchObject({ transport: "redis-streams", count: 0 })
      // The app's relay is the only one: it holds every partition under a running lease.
      expect(report.relay.live).toBe(1)
      const partitions = report.relay.partitions as Array<{
        partition: number
        owner?: string
        held: boolean
        leaseUntil?: string
      }>
      expect(partitions.map((p) => p.partition)).toEqual(partitions.map((_, i) => i))
      expect(partitions.length).toBeGreaterThan(1)
      const owners = new Set(partitions.map((p) => p.owner))
      expect(owners.size).toBe(1)
      expect([...owners][0]).toMatch(/^relay-/)
      expect(partitions.every((p) => p.held && Date.parse(p.leaseUntil!) > Date.now() - 1_000)).toBe(true)
      const human = await bus(["status"], brokerEnv)
      expect(human.stdout).toContain(`${partitions.length} held by ${[...owners][0]}`)
    } finally {
      await app.close()
    }

    // With no relay running, rows wait: status counts what the store's relay backlog counts,
    // and the closed relay gave its partitions back (its membership lapses with its lease).
    const writer = await appBus("redis-streams", "bus", false)
    try {
      await publish(writer, 7, "waiting")
      expect(await backlog(writer)).toBe(7)
      const report = JSON.parse((await bus(["status", "--json"], brokerEnv)).stdout)
      expect(report.outbox.unforwarded).toBe(7)
      expect(report.outbox.relayLagMs).toBeGreaterThan(0)
      expect(
        report.relay.partitions.every(
          (p: { held: boolean; owner?: string }) => !p.held && p.owner === undefined,
        ),
      ).toBe(true)
    } finally {
      await writer.close()
    }

    // A relay that died holding partition 0 leaves its name and a lease that ran out.
    const client = new pg.Client({ connectionString: postgres.url })
    await client.connect()
    try {
      await client.query(
        "UPDATE bus.relay_partitions SET owner = 'relay-gone', lease_until = now() - interval '3 seconds' WHERE partition = 0",
      )
      const report = JSON.parse((await bus(["status", "--json"], brokerEnv)).stdout)
      expect(report.relay.partitions[0]).toMatchObject({ partition: 0, owner: "relay-gone", held: false })
      const human = await bus(["status"], brokerEnv)
      expect(human.stdout).toMatch(/\n\s+0\s+relay-gone\s+lease ran out \d/)
    } finally {
      await client.end()
    }
  })
})

describe("operator commands", () => {
  it("bus --version, status --watch until Ctrl-C, dead-letters list and replay", async () => {
    const version = await bus(["--version"])
    expect(version.code).toBe(0)
    expect(version.stdout).toMatch(/^bus \d+\.\d+\.\d+ \(@bus\/cli, node \d+/)

    const schema = "ops"
    expect((await bus(["migrate", "--schema", schema])).code).toBe(0)
    const app = await appBus("postgres-notify", schema)
    try {
      let fixed = false
      const handled: Array<string> = []
      const consumer = app.consume(
        { tenant: "acme", channel: "orders", group: "billing", maxAttempts: 1 },
        (e) => {
          if (!fixed) throw new Error("card service down")
          handled.push(e.id)
        },
      )
      const [id] = await publish(app, 1, "orders", "acme")
      const deadline = Date.now() + 20_000
      let listed: Array<{ id: string; source: string; reason: string }> = []
      while (listed.length === 0 && Date.now() < deadline) {
        listed = JSON.parse((await bus(["dead-letters", "list", "--schema", schema, "--json"])).stdout)
        if (listed.length === 0) await new Promise((r) => setTimeout(r, 200))
      }
      expect(listed).toHaveLength(1)
      expect(listed[0]).toMatchObject({ id, source: "billing", tenant: "acme", channel: "orders" })
      expect(listed[0]!.reason).toContain("card service down")
      const plain = await bus(["dead-letters", "list", "--schema", schema])
      expect(plain.stdout).toContain(`${id} acme/orders order.paid · billing gave up after 1`)

      fixed = true
      const replayed = await bus(["dead-letters", "replay", id!, "--schema", schema])
      expect(replayed.code).toBe(0)
      expect(replayed.stdout).toContain(`replayed ${id} (acme/orders, given up by billing)`)
      while (handled.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
      expect(handled).toEqual([id])
      expect((await bus(["dead-letters", "list", "--schema", schema])).stdout).toBe("no dead letters\n")
      const again = await bus(["dead-letters", "replay", id!, "--schema", schema])
      expect(again.code).toBe(1)
      expect(again.stdout).toContain(`not a dead letter: ${id}`)
      expect((await bus(["dead-letters", "replay", "nope", "--schema", schema])).stderr).toContain(
        "not event ids: nope",
      )
      await consumer.close()

      // --watch: a report per interval until SIGINT, then exit 0.
      const child = spawn(
        process.execPath,
        [bin, "status", "--schema", schema, "--watch", "--json", "--interval", "0.5"],
        {
          env: { PATH: process.env.PATH ?? "", DATABASE_URL: postgres.url },
          stdio: ["ignore", "pipe", "pipe"],
        },
      )
      let out = ""
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString()
      })
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
      const watchDeadline = Date.now() + 30_000
      while (out.split("\n").filter((l) => l.startsWith("{")).length < 3 && Date.now() < watchDeadline)
        await new Promise((r) => setTimeout(r, 100))
      child.kill("SIGINT")
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
      expect(await exited).toBe(0)
      clearTimeout(timer)
      const reports = out.split("\n").filter((l) => l.startsWith("{"))
      expect(reports.length).toBeGreaterThanOrEqual(3)
      for (const r of reports) expect(JSON.parse(r)).toHaveProperty("deadLetters")
    } finally {
      await app.close()
    }
  })
})

describe("bus trigger", () => {
  it("attaches the publish trigger to an existing table: its writes reach a broker subscriber like SDK events; list, detach and bad input", async () => {
    const schema = "trig"
    expect((await bus(["migrate", "--schema", schema])).code).toBe(0)
    const db = new pg.Client({ connectionString: postgres.url })
    await db.connect()
    const app = await appBus("redis-streams", schema)
    try {
      await db.query(
        "CREATE TABLE public.invoices (id int PRIMARY KEY, customer text NOT NULL, amount int, pdf text)",
      )
      const attached = await bus([
        "trigger",
        "attach",
        "public.invoices",
        "--schema",
        schema,
        "--tenant-column",
        "customer",
        "--channel",
        "invoices",
        "--type",
        "invoice",
        "--columns",
        "id,amount",
      ])
      expect(attached.stderr).toBe("")
      expect(attached.code).toBe(0)
      expect(attached.stdout).toContain("attached bus_publish_invoices to public.invoices")
      const list = await bus(["trigger", "list", "--schema", schema, "--json"])
      expect(JSON.parse(list.stdout)).toEqual([
        {
          table: "invoices",
          trigger: "bus_publish_invoices",
          on: "INSERT OR UPDATE OR DELETE",
          tenantColumn: "customer",
          channel: "invoices",
          type: "invoice",
          payload: "columns:id,amount",
        },
      ])

      const got: Array<{ id: string; type: string; data: unknown }> = []
      const sub = app.subscribe({ tenant: "acme", channel: "invoices", from: "now" })
      await sub.ready
      const reading = (async () => {
        for await (const e of sub) got.push({ id: e.id, type: e.type, data: e.data })
      })()
      // The application's own write, no @bus code: INSERT, a rolled-back INSERT, UPDATE.
      await db.query("INSERT INTO public.invoices VALUES (1, 'acme', 100, 'big')")
      await db.query("BEGIN")
      await db.query("INSERT INTO public.invoices VALUES (2, 'acme', 200, 'big')")
      await db.query("ROLLBACK")
      await db.query("UPDATE public.invoices SET amount = 150 WHERE id = 1")
      // …and an SDK publish on the same address in between: one ordered stream.
      await publish(app, 1, "invoices", "acme")
      await db.query("DELETE FROM public.invoices WHERE id = 1")
      const deadline = Date.now() + 20_000
      while (got.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      await new Promise((r) => setTimeout(r, 300))
      await sub.close()
      await reading
      expect(got.map((e) => e.type)).toEqual([
        "invoice.insert",
        "invoice.update",
        "order.paid",
        "invoice.delete",
      ])
      expect(got[0]!.data).toEqual({ id: 1, amount: 100 })
      const stored = await db.query(
        `SELECT id::text FROM ${schema}.outbox WHERE channel = 'invoices' ORDER BY seq`,
      )
      expect(got.map((e) => e.id)).toEqual(stored.rows.map((r) => r.id))

      const missing = await bus([
        "trigger",
        "attach",
        "public.invoices",
        "--schema",
        schema,
        "--channel",
        "x",
        "--type",
        "t",
      ])
      expect(missing.code).toBe(2)
      expect(missing.stderr).toContain("--tenant-column is required")
      const badColumn = await bus([
        "trigger",
        "attach",
        "public.invoices",
        "--schema",
        schema,
        "--tenant-column",
        "nope",
        "--channel",
        "x",
        "--type",
        "t",
      ])
      expect(badColumn.code).toBe(1)
      expect(badColumn.stderr).toContain("has no column nope")
      const noTable = await bus([
        "trigger",
        "attach",
        "public.nothing",
        "--schema",
        schema,
        "--tenant-column",
        "c",
        "--channel",
        "x",
        "--type",
        "t",
      ])
      expect(noTable.code).toBe(1)
      expect(noTable.stderr).toMatch(/relation "public.nothing" does not exist/)

      const detached = await bus([
        "trigger",
        "detach",
        "public.invoices",
        "--schema",
        schema,
        "--channel",
        "invoices",
      ])
      expect(detached.stdout).toContain("detached bus_publish_invoices")
      expect((await bus(["trigger", "list", "--schema", schema])).stdout).toContain("no publish triggers")
    } finally {
      await app.close()
      await db.end()
    }
  })
})

describe("bus tail", () => {
  it("prints a channel's events: plain when piped, coloured on request, JSON with --json, resumable", async () => {
    const app = await appBus("postgres-notify")
    try {
      const ids = await publish(app, 5, "tailed")
      const plain = await bus(["tail", "acme", "tailed", "--from", "beginning", "--count", "3"])
      expect(plain.code, plain.stderr).toBe(0)
      const lines = plain.stdout.trim().split("\n")
      expect(lines).toHaveLength(3)
      expect(lines[0]).toContain("order.paid")
      expect(lines[0]).toContain(ids[0])
      expect(lines[0]).toContain('{"i":0}')
      expect(plain.stdout).not.toMatch(ansi)
      const resume = /--from (\S+)/.exec(plain.stderr)?.[1]
      expect(resume).toMatch(/^pg2:/)

      const json = await bus(["tail", "acme", "tailed", "--from", resume!, "--count", "2", "--json"])
      const events = json.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l))
      expect(events.map((e) => e.id)).toEqual(ids.slice(3, 5))
      expect(events[0].cursor).toMatch(/^pg2:/)

      const coloured = await bus(["tail", "acme", "tailed", "--from", "beginning", "--count", "1"], {
        FORCE_COLOR: "1",
      })
      expect(coloured.stdout).toMatch(ansi)

      // Live: a tail from "now" prints what is published after it started (it says so once
      // its start is fixed; a process start can take seconds on a loaded machine).
      let started = () => {}
      const tailing = new Promise<void>((resolve) => {
        started = resolve
      })
      const live = bus(["tail", "acme", "tailed", "--count", "2"], {}, 30_000, (stderr) => {
        if (stderr.includes("tailing acme/tailed")) started()
      })
      await Promise.race([tailing, live])
      const later = await publish(app, 2, "tailed")
      const liveResult = await live
      expect(liveResult.stdout).toContain(later[0])
      expect(liveResult.stdout).toContain(later[1])
    } finally {
      await app.close()
    }
  })

  it("tails through a broker, and explains bad input", async () => {
    const app = await appBus("redis-streams")
    try {
      const ids = await publish(app, 3, "brokered")
      const r = await bus(["tail", "acme", "brokered", "--from", "beginning", "--count", "3"], {
        BUS_TRANSPORT: "redis-streams",
        REDIS_URL: redis.url,
      })
      expect(r.code, r.stderr).toBe(0)
      for (const id of ids) expect(r.stdout).toContain(id)
      expect(r.stderr).toMatch(/--from redis2:/)

      const noUrl = await bus(["tail", "acme", "brokered"], { BUS_TRANSPORT: "redis-streams" })
      expect(noUrl.code).toBe(2)
      expect(noUrl.stderr).toMatch(/needs a Redis URL/)
      const badCursor = await bus(["tail", "acme", "brokered", "--from", "pg1:nonsense"])
      expect(badCursor.code).toBe(1)
      expect(badCursor.stderr).toMatch(/cannot start from "pg1:nonsense"/)
      const badName = await bus(["tail", "ac me", "orders", "--count", "1"])
      expect(badName.code).toBe(1)
      expect(badName.stderr).toMatch(/InvalidName/)
    } finally {
      await app.close()
    }
  })
})
