import { type Bus, CursorInvalid, createBus, type DeliveredEvent, type Subscription } from "@bus/core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { rotateEpoch } from "../src/adapter.js"
import { postgresOutbox } from "../src/index.js"
import { event, eventually, inTransaction, startDb, type TestDb } from "./support/db.js"

/**
 * `rotateEpoch` (after restoring a backup) refuses every cursor issued before it. Clients
 * holding one are told once (`CursorInvalid`, the SSE `reset`); clients with no cursor are
 * never told, however often they (re)connect: the shared feed's own position is not theirs.
 */

let db: TestDb
const closers: Array<() => Promise<unknown>> = []
const A = { tenant: "acme", channel: "orders" }

beforeAll(async () => {
  db = await startDb()
})

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => {})
  await db?.close()
})

/** Follows a subscription: events, and the error that ended it (if any). */
const follow = (sub: Subscription) => {
  const events: Array<DeliveredEvent> = []
  const state: { error: unknown; ended: boolean } = { error: undefined, ended: false }
  void (async () => {
    try {
      for await (const e of sub) events.push(e)
    } catch (error) {
      state.error = error
    }
    state.ended = true
  })()
  return { events, state }
}

const publish = async (bus: Bus, n: number) => {
  const ids: Array<string> = []
  await inTransaction(db.pool, async (c) => {
    for (let i = 0; i < n; i++) {
      const e = event(A.tenant, A.channel, { i })
      ids.push(
        ...(await bus.publish(c, { tenant: e.tenant, channel: e.channel, type: e.type, data: e.data })).ids,
      )
    }
  })
  return ids
}

describe("epoch rotation", () => {
  it("no cursor: never a reset; an old-epoch cursor: exactly one", async () => {
    const schema = await db.freshSchema()
    const pgn = postgresOutbox({ connectionString: db.url, schema, migrate: false, pressure: false })
    const bus = await createBus({
      outbox: pgn,
      env: false,
    })
    closers.push(() => bus.close())

    // A live subscriber across the rotation, and an event whose cursor is of the old epoch.
    const live = bus.subscribe({ ...A, from: "now" })
    await live.ready
    const before = follow(live)
    const [firstId] = await publish(bus, 1)
    await eventually(() => (before.events.length === 1 ? true : undefined))
    expect(before.events[0]!.id).toBe(firstId)
    const oldCursor = before.events[0]!.cursor

    await rotateEpoch({ pool: db.pool, schema })

    // Clients with no cursor connect (again and again, as after a reset), before and after
    // the next commit: none is refused, each gets what is published after it is ready.
    const fresh: Array<ReturnType<typeof follow>> = []
    for (let round = 0; round < 3; round++) {
      const sub = bus.subscribe({ ...A, from: "now" })
      await sub.ready
      fresh.push(follow(sub))
      const ids = await publish(bus, 2)
      await eventually(() =>
        fresh.every((f) => ids.every((id) => f.events.some((e) => e.id === id))) ? true : undefined,
      )
    }
    for (const f of fresh) {
      expect(f.state.error).toBeUndefined()
      expect(f.state.ended).toBe(false)
    }
    expect(fresh[0]!.events).toHaveLength(6)
    expect(fresh[2]!.events).toHaveLength(2)

    // The subscriber that held old-epoch positions was told exactly once, and ended.
    await eventually(() => (before.state.ended ? true : undefined))
    expect(before.state.error).toBeInstanceOf(CursorInvalid)
    expect(before.state.error).toMatchObject({ reason: "foreign" })
    expect(before.events).toHaveLength(1)

    // A client resuming with an old-epoch cursor: refused once (ready rejects), then,
    // reconnecting without one as the reset tells it to, never again.
    const resumed = bus.subscribe({ ...A, from: oldCursor })
    const refused = await resumed.ready.then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(refused).toBeInstanceOf(CursorInvalid)
    expect(refused).toMatchObject({ reason: "foreign" })
    const again = bus.subscribe({ ...A, from: "now" })
    await again.ready
    const afterReset = follow(again)
    const lastIds = await publish(bus, 1)
    await eventually(() => (afterReset.events.some((e) => e.id === lastIds[0]) ? true : undefined))
    expect(afterReset.state.error).toBeUndefined()
    // A cursor of the new epoch resumes as usual.
    const newCursor = afterReset.events[0]!.cursor
    const next = bus.subscribe({ ...A, from: newCursor })
    expect(await next.ready).toBe(newCursor)
    await live.close()
    for (const s of [again, next]) await s.close()
  })
})
