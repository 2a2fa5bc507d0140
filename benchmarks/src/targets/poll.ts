import type pg from "pg"
import { makeClient, makePool } from "../harness/pg.js"
import { eventData, type OpenRequest, type Pipe, PRIMER, padFor, readiness, type Session } from "./pipe.js"

/**
 * The polling baseline: every subscriber asks the database for new rows every
 * `intervalMs` (`SELECT … WHERE channel = $1 AND id > $2`), the way a hand-rolled
 * consumer without LISTEN works. Producers insert plain rows (no NOTIFY).
 */

const schemaSql = `CREATE SCHEMA IF NOT EXISTS bench_poll;
CREATE TABLE IF NOT EXISTS bench_poll.events (
  id bigserial PRIMARY KEY, channel text NOT NULL, data jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS events_channel_id ON bench_poll.events (channel, id);`

export const ensurePollSchema = async (url: string): Promise<void> => {
  const c = makeClient({ connectionString: url, application_name: "bench-admin" })
  await c.connect()
  try {
    await c.query(schemaSql)
  } finally {
    await c.end()
  }
}

export interface Pollers {
  stop(): Promise<void>
}

/** Starts one poller per entry of `channels` (entries may repeat), staggered over the interval. */
export const startPollers = async (
  url: string,
  channels: readonly string[],
  intervalMs: number,
  onRow: (data: { s: number; t: number }, poller: number) => void,
): Promise<Pollers> => {
  const pool = makePool({ connectionString: url, application_name: "bench-poller", max: 10 })
  pool.on("error", () => undefined)
  const cursors = new Float64Array(channels.length)
  const start = await pool.query("SELECT coalesce(max(id), 0)::bigint AS id FROM bench_poll.events")
  cursors.fill(Number(start.rows[0]?.id ?? 0))
  const timers: NodeJS.Timeout[] = []
  const inFlight = new Set<Promise<unknown>>()
  let stopped = false
  const poll = (i: number) => {
    if (stopped) return
    const p = pool
      .query("SELECT id, data FROM bench_poll.events WHERE channel = $1 AND id > $2 ORDER BY id LIMIT 1000", [
        channels[i],
        cursors[i],
      ])
      .then((res) => {
        for (const row of res.rows) {
          cursors[i] = Number(row.id)
          onRow(row.data as { s: number; t: number }, i)
        }
      })
      .catch(() => undefined)
    inFlight.add(p)
    p.finally(() => inFlight.delete(p))
  }
  channels.forEach((_, i) => {
    const first = setTimeout(
      () => {
        poll(i)
        timers.push(setInterval(() => poll(i), intervalMs))
      },
      (intervalMs * i) / channels.length,
    )
    timers.push(first)
  })
  return {
    stop: async () => {
      stopped = true
      for (const t of timers) clearTimeout(t)
      await Promise.allSettled([...inFlight])
      await pool.end().catch(() => undefined)
    },
  }
}

/** The polling baseline as a {@link Pipe}: all subscribers poll the session's channel. */
export const pollPipe = (o: {
  readonly url: string
  readonly producerUrl: string
  readonly intervalMs: number
}): Pipe => {
  let producer: pg.Pool | undefined
  return {
    id: "poll",
    label: `polling every ${o.intervalMs / 1000} s`,
    transport: "postgres-notify",
    kind: "raw",
    maxSubscribers: Number.POSITIVE_INFINITY,
    open: async (r: OpenRequest): Promise<Session> => {
      await ensurePollSchema(o.url)
      producer ??= makePool({
        connectionString: o.producerUrl,
        application_name: "bench-producer",
        max: 16,
      })
      producer.on("error", () => undefined)
      const p = producer
      const ready = readiness(r.subscribers, r.onReceive)
      const pollers = await startPollers(o.url, Array(r.subscribers).fill(r.channel), o.intervalMs, (d, i) =>
        ready.onReceive(d.s, d.t, i, performance.now()),
      )
      const pad = padFor(r.payloadBytes)
      const send = async (seqs: readonly number[], intendedAt: number) => {
        const client = await p.connect()
        try {
          await client.query("BEGIN")
          for (const s of seqs) {
            await client.query("INSERT INTO bench_poll.events (channel, data) VALUES ($1, $2)", [
              r.channel,
              JSON.stringify(eventData(s, intendedAt, pad)),
            ])
          }
          await client.query("COMMIT")
        } catch (error) {
          await client.query("ROLLBACK").catch(() => undefined)
          throw error
        } finally {
          client.release()
        }
      }
      try {
        await ready.waitLive(() => send([PRIMER], performance.now()), r.readyTimeoutMs)
      } catch (error) {
        await pollers.stop()
        throw error
      }
      return { send, errors: [], close: () => pollers.stop() }
    },
    close: async () => {
      await producer?.end().catch(() => undefined)
      producer = undefined
    },
  }
}
