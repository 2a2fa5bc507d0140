import type { DeliveredEvent } from "@bus/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  createPostgresOutboxStore,
  type PostgresOutboxHandle,
  type PostgresOutboxService,
} from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"
import { failure, openScope, run } from "./support/run.js"

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []
const address = { tenant: "acme", channel: "orders" }

const store = async (options: { groupLeaseMs?: number } = {}): Promise<PostgresOutboxService> => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: await db.freshSchema(),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    ...options,
  })
  handles.push(h)
  return h.store
}

const seed = async (s: PostgresOutboxService, n: number) => {
  const events = Array.from({ length: n }, (_, i) => event("acme", "orders", { i }))
  await inTransaction(db.pool, (c) => run(s.append(c, events)))
  return events
}

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

describe("relay leases", () => {
  it("leases in outbox order, skips addresses under a live lease, re-leases expired ones with a higher attempt count", async () => {
    const s = await store()
    const events = await seed(s, 5)
    const invoices = [event("acme", "invoices", { i: 0 }), event("acme", "invoices", { i: 1 })]
    await inTransaction(db.pool, (c) => run(s.append(c, invoices)))
    expect(await run(s.backlog)).toBe(7)
    const first = await run(s.lease("r1", 3, 200))
    expect(first.map((l) => l.event.id)).toEqual(events.slice(0, 3).map((e) => e.id))
    expect(first.every((l) => l.attempts === 1)).toBe(true)
    expect(first[0]!.event).toEqual(events[0])
    // acme/orders is with r1: its later rows must not go to another relay and overtake.
    const second = await run(s.lease("r2", 10, 200))
    expect(second.map((l) => l.event.id)).toEqual(invoices.map((e) => e.id))
    expect(await run(s.lease("r3", 10, 200))).toHaveLength(0)
    await new Promise((r) => setTimeout(r, 250))
    const again = await run(s.lease("r3", 10, 10_000))
    expect(again.map((l) => [l.event.id, l.attempts])).toEqual([
      ...events.slice(0, 3).map((e) => [e.id, 2]),
      ...events.slice(3).map((e) => [e.id, 1]),
      ...invoices.map((e) => [e.id, 2]),
    ])
  })

  it("skips an address whose oldest unforwarded row another transaction holds locked", async () => {
    const s = await store()
    const events = await seed(s, 3)
    const other = event("acme", "invoices")
    await inTransaction(db.pool, (c) => run(s.append(c, [other])))
    const locker = await db.pool.connect()
    try {
      await locker.query("BEGIN")
      await locker.query(`SELECT 1 FROM "${s.schema}".outbox WHERE id = $1 FOR UPDATE`, [events[0]!.id])
      // Row 0 is locked (as by a relay settling it right now): rows 1 and 2 must wait for it.
      const leased = await run(s.lease("r1", 10, 10_000))
      expect(leased.map((l) => l.event.id)).toEqual([other.id])
      await locker.query("COMMIT")
    } finally {
      locker.release()
    }
    const rest = await run(s.lease("r2", 10, 10_000))
    expect(rest.map((l) => l.event.id)).toEqual(events.map((e) => e.id))
  })

  it("keeps per-address order across several concurrent relays (leases, failures, releases)", async () => {
    const s = await store()
    const addresses = ["a", "b", "c", "d"].map((channel) => ({ tenant: "acme", channel }))
    const expected = new Map<string, Array<string>>(addresses.map((a) => [a.channel, []]))
    // 30 producer transactions of 1-8 events each, addresses interleaved.
    for (let t = 0; t < 30; t++) {
      const batch = Array.from({ length: 1 + (t % 8) }, (_, i) => {
        const a = addresses[(t * 7 + i * 3) % addresses.length]!
        return event(a.tenant, a.channel, { t, i })
      })
      for (const e of batch) expected.get(e.channel)!.push(e.id)
      await inTransaction(db.pool, (c) => run(s.append(c, batch)))
    }
    const total = [...expected.values()].reduce((n, ids) => n + ids.length, 0)
    // What the broker saw, per address, in arrival order (re-sends after a failure included).
    const broker = new Map<string, Array<string>>(addresses.map((a) => [a.channel, []]))
    const forwarded = new Set<string>()
    let rng = 42
    const random = () => {
      rng = (rng * 1103515245 + 12345) % 2147483648
      return rng / 2147483648
    }
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
    let overlaps = 0
    const inFlight = new Map<string, string>()
    const relay = async (owner: string) => {
      let idle = 0
      while (forwarded.size < total && idle < 400) {
        const leased = await run(s.lease(owner, 1 + Math.floor(random() * 6), 60_000))
        if (leased.length === 0) {
          idle++
          await sleep(2)
          continue
        }
        idle = 0
        const byAddress = new Map<string, Array<(typeof leased)[number]>>()
        for (const l of leased) {
          const list = byAddress.get(l.event.channel) ?? []
          list.push(l)
          byAddress.set(l.event.channel, list)
        }
        const done: Array<string> = []
        const failed: Array<{ id: string; error: string; park: boolean }> = []
        const untried: Array<string> = []
        await Promise.all(
          [...byAddress.entries()].map(async ([channel, rows]) => {
            const holder = inFlight.get(channel)
            if (holder !== undefined && holder !== owner) overlaps++
            inFlight.set(channel, owner)
            for (let i = 0; i < rows.length; i++) {
              await sleep(Math.floor(random() * 3))
              if (random() < 0.05) {
                // The broker refused this one: retry it later, hand back the rest untried.
                failed.push({ id: rows[i]!.event.id, error: "nope", park: false })
                untried.push(...rows.slice(i + 1).map((r) => r.event.id))
                break
              }
              broker.get(channel)!.push(rows[i]!.event.id)
              done.push(rows[i]!.event.id)
            }
            if (inFlight.get(channel) === owner) inFlight.delete(channel)
          }),
        )
        await run(s.complete(owner, done))
        for (const id of done) forwarded.add(id)
        await run(s.release(owner, untried))
        await run(s.fail(owner, failed, 1_000))
      }
    }
    await Promise.all(["r1", "r2", "r3", "r4", "r5"].map(relay))
    expect(forwarded.size).toBe(total)
    expect(overlaps).toBe(0)
    for (const a of addresses) {
      // Every event once, in the producer's order: no later row overtook an earlier one.
      expect(broker.get(a.channel)).toEqual(expected.get(a.channel))
    }
  })

  it("never hands one row, or one address, to two concurrent relays", async () => {
    const s = await store()
    const events = Array.from({ length: 200 }, (_, i) => event("acme", `ch${i % 10}`, { i }))
    await inTransaction(db.pool, (c) => run(s.append(c, events)))
    let leased = 0
    for (let round = 0; round < 20 && leased < 200; round++) {
      const batches = await Promise.all(
        Array.from({ length: 6 }, (_, i) => run(s.lease(`r${round}-${i}`, 40, 10_000))),
      )
      const ids = batches.flat().map((l) => l.event.id)
      expect(new Set(ids).size).toBe(ids.length)
      leased += ids.length
      // Within one round, each address went to one relay only.
      const perAddress = new Map<string, Set<number>>()
      batches.forEach((batch, i) => {
        for (const l of batch) {
          const set = perAddress.get(l.event.channel) ?? new Set<number>()
          set.add(i)
          perAddress.set(l.event.channel, set)
        }
      })
      for (const set of perAddress.values()) expect(set.size).toBe(1)
      for (const [i, batch] of batches.entries())
        await run(
          s.complete(
            `r${round}-${i}`,
            batch.map((l) => l.event.id),
          ),
        )
    }
    expect(leased).toBe(200)
    expect(await run(s.backlog)).toBe(0)
  })

  it("completes only the owner's leases; release gives rows back without counting an attempt", async () => {
    const s = await store()
    const events = await seed(s, 3)
    const leased = await run(s.lease("r1", 3, 10_000))
    await run(s.complete("someone-else", [events[0]!.id]))
    expect(await run(s.backlog)).toBe(3)
    await run(s.complete("r1", [events[0]!.id]))
    expect(await run(s.backlog)).toBe(2)
    await run(
      s.release(
        "r1",
        leased.slice(1).map((l) => l.event.id),
      ),
    )
    const again = await run(s.lease("r2", 10, 10_000))
    expect(again.map((l) => [l.event.id, l.attempts])).toEqual(events.slice(1).map((e) => [e.id, 1]))
  })

  it("retries failures, parks over the attempt budget or on request, and keeps parked rows readable", async () => {
    const s = await store()
    const events = await seed(s, 3)
    await run(s.lease("r1", 3, 10_000))
    const r1 = await run(
      s.fail(
        "r1",
        [
          { id: events[0]!.id, error: "broker said no", park: false },
          { id: events[1]!.id, error: "poison", park: true },
        ],
        3,
      ),
    )
    expect(r1.parked).toBe(1)
    // A failure reported by a relay that no longer owns the lease changes nothing.
    expect((await run(s.fail("intruder", [{ id: events[2]!.id, error: "x", park: true }], 1))).parked).toBe(0)
    expect(await run(s.backlog)).toBe(2)
    // Row 2 is still leased to r1, which holds its address; a relay hands such rows back.
    expect(await run(s.lease("r2", 10, 10_000))).toHaveLength(0)
    await run(s.release("r1", [events[2]!.id]))
    for (let attempt = 2; attempt <= 3; attempt++) {
      const leased = await run(s.lease("r1", 1, 10_000))
      expect(leased.map((l) => [l.event.id, l.attempts])).toEqual([[events[0]!.id, attempt]])
      await run(s.fail("r1", [{ id: events[0]!.id, error: `try ${attempt}`, park: false }], 3))
    }
    expect(await run(s.backlog)).toBe(1)
    const letters = await run(s.deadLetters(10))
    expect(letters.map((l) => [l.event.id, l.reason, l.source, l.attempts])).toEqual([
      [events[0]!.id, "try 3", "relay", 3],
      [events[1]!.id, "poison", "relay", 1],
    ])
    expect(letters[0]!.event).toEqual(events[0])
    const readable = await run(s.read(address, "beginning", 10))
    expect(readable.events).toHaveLength(3)
  })

  it("records dead letters from consumer groups, newest first", async () => {
    const s = await store()
    const [a, b] = await seed(s, 2)
    await run(
      s.deadLetter({
        event: a!,
        reason: "handler gave up",
        source: "billing",
        attempts: 5,
        at: "2026-01-01T00:00:00.000Z",
      }),
    )
    await run(
      s.deadLetter({
        event: b!,
        reason: "bad data",
        source: "billing",
        attempts: 1,
        at: new Date().toISOString(),
      }),
    )
    const letters = await run(s.deadLetters(1))
    expect(letters).toHaveLength(1)
    expect(letters[0]).toMatchObject({ reason: "bad data", source: "billing", attempts: 1 })
    expect((await run(s.deadLetters(10)))[1]).toMatchObject({ at: "2026-01-01T00:00:00.000Z", event: a })
  })
})

describe("consumer groups", () => {
  it("lets one member hold a group at a time and hands the committed cursor to the next", async () => {
    // A lease long enough that a busy test machine never misses a renewal by accident.
    const s = await store({ groupLeaseMs: 1_500 })
    const [e] = await seed(s, 1)
    const page = await run(s.read(address, "beginning", 10))
    const cursor = (page.events[0] as DeliveredEvent).cursor
    expect(page.events[0]!.id).toBe(e!.id)

    const a = openScope()
    const claimA = await a.use(s.claimGroup(address, "billing"))
    expect(claimA.cursor).toBe("beginning")

    const b = openScope()
    let claimedB: { cursor: string } | undefined
    const waiting = b.use(s.claimGroup(address, "billing")).then((c) => {
      claimedB = c
      return c
    })
    // B waits while A holds the claim, across several lease renewals.
    await new Promise((r) => setTimeout(r, 2_000))
    expect(claimedB).toBeUndefined()
    await run(claimA.commit(cursor))
    await a.close()
    const claimB = await waiting
    expect(claimB.cursor).toBe(cursor)

    // Another group of the same address is independent.
    const c = openScope()
    expect((await c.use(s.claimGroup(address, "shipping"))).cursor).toBe("beginning")
    await c.close()
    await b.close()
    const bad = openScope()
    await expect(bad.use(s.claimGroup(address, "bad group"))).rejects.toMatchObject({ _tag: "InvalidName" })
    await bad.close()
  })

  it("fails commits of a member whose claim was taken over", async () => {
    const s = await store({ groupLeaseMs: 60_000 })
    const a = openScope()
    const claim = await a.use(s.claimGroup(address, "audit"))
    // Simulate a member that stalled past its lease and was replaced.
    await db.pool.query(
      `UPDATE "${s.schema}".consumer_groups SET owner = 'someone-else', lease_until = now() + interval '1 minute'`,
    )
    const err = await failure(claim.commit("beginning"))
    expect(err).toMatchObject({ _tag: "TransportFailure", retryable: false })
    await a.close()
    const row = await db.pool.query(`SELECT owner FROM "${s.schema}".consumer_groups`)
    expect(row.rows[0].owner).toBe("someone-else")
  })

  it("takes over a group whose holder died (lease ran out)", async () => {
    const s = await store({ groupLeaseMs: 200 })
    await db.pool.query(
      `INSERT INTO "${s.schema}".consumer_groups (tenant, channel, group_name, cursor, owner, lease_until)
       VALUES ('acme', 'orders', 'dead', 'pg1:x', 'crashed-process', now() + interval '300 milliseconds')`,
    )
    const scope = openScope()
    const started = Date.now()
    const claim = await scope.use(s.claimGroup(address, "dead"))
    expect(claim.cursor).toBe("pg1:x")
    expect(Date.now() - started).toBeGreaterThanOrEqual(200)
    await scope.close()
    await eventually(async () => {
      const row = await db.pool.query(
        `SELECT owner FROM "${s.schema}".consumer_groups WHERE group_name = 'dead'`,
      )
      return row.rows[0].owner === null ? true : undefined
    })
  })
})
