import type { DeliveredEvent } from "@bus/core"
import type { Envelope, RelayedEvent } from "@bus/core/adapter"
import { Effect } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createPostgresOutboxStore, type PostgresOutboxHandle } from "../src/adapter.js"
import type { PostgresOutboxService } from "../src/index.js"
import { event, inTransaction, startDb, type TestDb } from "./support/db.js"
import { run } from "./support/run.js"

/**
 * What a transport flip relies on from the store (docs/flip.md): the outbox position of
 * each leased row, compared with reader cursors (`covers`); the frontier each leased row
 * carries (an outbox cursor covering only rows that reached the broker at or before it);
 * and the consumer groups' inbox. Out-of-order commits are forced throughout.
 */

let db: TestDb
const handles: Array<PostgresOutboxHandle> = []

const store = async (): Promise<PostgresOutboxService> => {
  const h = await createPostgresOutboxStore({
    pool: db.pool,
    schema: await db.freshSchema(),
    migrate: false,
    listen: false,
    pollIntervalMs: 0,
    pressure: false,
  })
  handles.push(h)
  return h.store
}

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  await Promise.all(handles.map((h) => h.close()))
  await db?.close()
})

const channels = ["a", "b", "c"]

/** Opens a transaction that appends `events` and stays open until `commit()`. */
const openTransaction = async (s: PostgresOutboxService, events: ReadonlyArray<Envelope>) => {
  const client: pg.PoolClient = await db.pool.connect()
  await client.query("BEGIN")
  await run(s.append(client, events))
  return {
    commit: async () => {
      await client.query("COMMIT")
      client.release()
    },
  }
}

/**
 * Appends `rounds` batches on random channels with some transactions held open across
 * others (so xid order, seq order and commit order all differ).
 */
const churn = async (s: PostgresOutboxService, rounds: number, seed: number) => {
  let rng = seed
  const random = () => {
    rng = (rng * 1103515245 + 12345) % 2147483648
    return rng / 2147483648
  }
  const open: Array<{ commit: () => Promise<void> }> = []
  for (let r = 0; r < rounds; r++) {
    const batch = Array.from({ length: 1 + Math.floor(random() * 3) }, () =>
      event("acme", channels[Math.floor(random() * channels.length)]!, { r }),
    )
    if (random() < 0.3) open.push(await openTransaction(s, batch))
    else await inTransaction(db.pool, (c) => run(s.append(c, batch)))
    if (open.length > 0 && random() < 0.4)
      await open.splice(Math.floor(random() * open.length), 1)[0]!.commit()
  }
  return async () => {
    for (const t of open) await t.commit()
  }
}

/** Every committed event of an address, read through the outbox from the beginning. */
const readAll = async (s: PostgresOutboxService, channel: string, from = "beginning") => {
  const out: Array<DeliveredEvent> = []
  let cursor = from
  for (;;) {
    const page = await run(s.read({ tenant: "acme", channel }, cursor, 7))
    out.push(...page.events)
    cursor = page.next
    if (!page.more) return { events: out, cursor }
  }
}

/** Reads every relay partition a page at a time from its stored start, as the relay does. */
const relayReader = (s: PostgresOutboxService) => {
  const at = new Map<number, string>()
  return async (limit: number): Promise<Array<RelayedEvent>> => {
    const out: Array<RelayedEvent> = []
    for (let p = 0; p < s.relay.partitions; p++) {
      if (!at.has(p)) at.set(p, (await run(s.relay.claim(p, "reader", 60_000)))!.state.position)
      const page = await run(s.relay.read(p, at.get(p)!, limit))
      at.set(p, page.next)
      out.push(...page.rows)
    }
    return out
  }
}

describe("outbox positions and frontiers", () => {
  it("a reader's cursor covers exactly the positions of the events it delivered", async () => {
    const s = await store()
    const finish = await churn(s, 40, 7)
    // Readers stop at every cursor along the way (paging cursors included).
    const cursors = new Map<string, Array<{ cursor: string; delivered: Set<string> }>>()
    for (const channel of channels) {
      const list: Array<{ cursor: string; delivered: Set<string> }> = []
      let cursor = "beginning"
      const delivered = new Set<string>()
      for (;;) {
        const page = await run(s.read({ tenant: "acme", channel }, cursor, 2))
        for (const e of page.events) {
          delivered.add(e.id)
          list.push({ cursor: e.cursor, delivered: new Set(delivered) })
        }
        cursor = page.next
        list.push({ cursor, delivered: new Set(delivered) })
        if (!page.more) break
      }
      cursors.set(channel, list)
    }
    await finish()
    // Read every partition as the relay does (several pages) to learn every row's position.
    const relay = relayReader(s)
    const positions: Array<RelayedEvent> = []
    for (;;) {
      const batch = await relay(5)
      if (batch.length === 0) break
      positions.push(...batch)
    }
    expect(positions.length).toBeGreaterThan(40)
    let checked = 0
    for (const leased of positions) {
      expect(leased.position).toMatch(/^pg1p:/)
      for (const { cursor, delivered } of cursors.get(leased.event.channel)!) {
        expect(s.covers(cursor, leased.position!), `${cursor} / ${leased.event.id}`).toBe(
          delivered.has(leased.event.id),
        )
        checked++
      }
    }
    expect(checked).toBeGreaterThan(100)
    expect(s.covers("mem1:abcdef12:3", positions[0]!.position!)).toBeUndefined()
    expect(s.ownsCursor(cursors.get("a")![0]!.cursor)).toBe(true)
    expect(s.ownsCursor("redis1:1-0")).toBe(false)
  })

  it("a relayed row's frontier covers only rows already on the broker, and everything once drained", async () => {
    const s = await store()
    const finish = await churn(s, 30, 11)
    // A relay in small batches while producers go on committing out of order; the broker
    // is a list per channel in arrival order.
    const broker = new Map<string, Array<RelayedEvent>>(channels.map((c) => [c, []]))
    const relay = relayReader(s)
    const relayOnce = async (limit: number) => {
      const batch = await relay(limit)
      for (const l of batch) broker.get(l.event.channel)!.push(l)
      return batch.length
    }
    const more = await churn(s, 10, 13)
    for (let i = 0; i < 6; i++) await relayOnce(1 + (i % 3))
    await finish()
    await more()
    while ((await relayOnce(4)) > 0) {}
    for (const channel of channels) {
      const arrived = broker.get(channel)!
      const all = (await readAll(s, channel)).events
      expect(arrived.map((l) => l.event.id).sort()).toEqual(all.map((e) => e.id).sort())
      for (let k = 0; k < arrived.length; k++) {
        const frontier = arrived[k]!.frontier!
        const onBroker = new Set(arrived.slice(0, k + 1).map((l) => l.event.id))
        // Resuming the outbox from the frontier leaves out only events already on the broker.
        const after = new Set((await readAll(s, channel, frontier)).events.map((e) => e.id))
        for (const e of all) if (!after.has(e.id)) expect(onBroker.has(e.id), `${channel}#${k}`).toBe(true)
      }
      // The last event's frontier: everything was on the broker, nothing comes again.
      const last = arrived[arrived.length - 1]!.frontier!
      expect((await readAll(s, channel, last)).events).toEqual([])
    }
  })

  it("keeps each group's inbox, and commits a position with its inbox entry in one write", async () => {
    const s = await store()
    const key = { tenant: "acme", channel: "a", group: "mailer" }
    const [e1, e2, e3] = [event("acme", "a"), event("acme", "a"), event("acme", "a")]
    await run(s.markHandled(key, [e1.id, e2.id]))
    await run(s.markHandled(key, [e2.id]))
    expect([...(await run(s.handled(key, [e1.id, e2.id, e3.id])))].sort()).toEqual([e1.id, e2.id].sort())
    expect((await run(s.handled({ ...key, group: "other" }, [e1.id]))).size).toBe(0)
    expect(await run(s.groupCursor(key))).toBeUndefined()
    const claimed = await run(
      Effect.scoped(
        Effect.gen(function* () {
          const claim = yield* s.claimGroup(key, "mailer")
          const head = yield* s.head(key)
          yield* claim.commit(head, e3.id)
          return head
        }),
      ),
    )
    expect(await run(s.groupCursor(key))).toBe(claimed)
    expect((await run(s.handled(key, [e3.id]))).has(e3.id)).toBe(true)
    // Retention takes inbox entries with the events.
    await db.pool.query(`UPDATE "${s.schema}".group_inbox SET handled_at = now() - interval '2 days'`)
    await run(s.prune(24 * 3600_000, { keepUnforwarded: false }))
    expect((await run(s.handled(key, [e1.id, e2.id, e3.id]))).size).toBe(0)
  })
})
