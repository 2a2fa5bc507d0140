import { createHash } from "node:crypto"
import { DeliverPolicy, jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { Redis } from "ioredis"
import type pg from "pg"
import type { BenchEnv } from "../harness/env.js"
import { makeClient, makePool } from "../harness/pg.js"
import { eventData, type OpenRequest, type Pipe, PRIMER, padFor, readiness, type Session } from "./pipe.js"

/**
 * The raw-client baselines: the least code that does the same job with the driver alone,
 * as a hand-rolled implementation would. Each has one receiver.
 *
 * - raw pg: `BEGIN; WITH ins AS (INSERT … RETURNING id) SELECT pg_notify(chan, payload)
 *   FROM ins; COMMIT` and a `LISTEN` connection that parses the payload (the event rides
 *   in the NOTIFY payload, so it is capped at 8000 bytes).
 * - raw nats: `js.publish(subject, json)` (awaits the PubAck) and an ordered consumer.
 * - raw redis: `XADD key * d json` and `XREADGROUP … BLOCK` + `XACK` on its own connection.
 */

const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error))

export const rawPgPipe = (env: BenchEnv): Pipe => {
  let pool: pg.Pool | undefined
  const setup = async () => {
    if (pool !== undefined) return pool
    pool = makePool({ connectionString: env.pgUrl, application_name: "bench-raw-producer", max: 16 })
    pool.on("error", () => undefined)
    await pool.query(`CREATE SCHEMA IF NOT EXISTS bench_raw;
      CREATE TABLE IF NOT EXISTS bench_raw.events (
        id bigserial PRIMARY KEY, tenant text NOT NULL, channel text NOT NULL,
        data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
    return pool
  }
  return {
    id: "raw-pg",
    label: "raw pg (INSERT + pg_notify + LISTEN)",
    transport: "postgres-notify",
    kind: "raw",
    maxSubscribers: 1,
    maxPayloadBytes: 7999,
    open: async (r: OpenRequest): Promise<Session> => {
      const p = await setup()
      const errors: string[] = []
      const ready = readiness(1, r.onReceive)
      const channel = `raw_${createHash("sha1").update(r.channel).digest("hex").slice(0, 24)}`
      const listener = makeClient({ connectionString: env.pgUrl, application_name: "bench-raw-listener" })
      listener.on("error", (e) => errors.push(errorText(e)))
      await listener.connect()
      listener.on("notification", (n) => {
        try {
          const d = JSON.parse(n.payload ?? "") as { s: number; t: number }
          ready.onReceive(d.s, d.t, 0, performance.now())
        } catch (error) {
          errors.push(errorText(error))
        }
      })
      await listener.query(`LISTEN ${channel}`)
      const pad = padFor(r.payloadBytes)
      const send = async (seqs: readonly number[], intendedAt: number) => {
        const client = await p.connect()
        try {
          await client.query("BEGIN")
          for (const s of seqs) {
            const payload = JSON.stringify(eventData(s, intendedAt, pad))
            await client.query(
              `WITH ins AS (INSERT INTO bench_raw.events (tenant, channel, data) VALUES ('bench', $1, $2) RETURNING id)
               SELECT pg_notify($3, $2::text) FROM ins`,
              [r.channel, payload, channel],
            )
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
        await listener.end().catch(() => undefined)
        throw error
      }
      return { send, errors, close: () => listener.end().catch(() => undefined) }
    },
    close: async () => {
      await pool?.end().catch(() => undefined)
      pool = undefined
    },
  }
}

export const rawNatsPipe = (env: BenchEnv): Pipe => {
  let nc: NatsConnection | undefined
  const stream = "RAWBENCH"
  const setup = async () => {
    if (nc !== undefined) return nc
    const url = env.nats?.url
    if (url === undefined) throw new Error("nats-server is not running")
    nc = await connect({ servers: url, name: "bench-raw-nats" })
    const jsm = await jetstreamManager(nc)
    try {
      await jsm.streams.info(stream)
    } catch {
      await jsm.streams.add({ name: stream, subjects: ["rawbench.>"], storage: StorageType.File })
    }
    return nc
  }
  return {
    id: "raw-nats",
    label: "raw nats.js (JetStream publish + ordered consumer)",
    transport: "nats",
    kind: "raw",
    maxSubscribers: 1,
    open: async (r: OpenRequest): Promise<Session> => {
      const conn = await setup()
      const js = jetstream(conn)
      const subject = `rawbench.${r.channel}`
      const errors: string[] = []
      const ready = readiness(1, r.onReceive)
      const consumer = await js.consumers.get(stream, {
        filter_subjects: subject,
        deliver_policy: DeliverPolicy.New,
      })
      const messages = await consumer.consume()
      ;(async () => {
        for await (const m of messages) {
          const d = m.json<{ s: number; t: number }>()
          ready.onReceive(d.s, d.t, 0, performance.now())
        }
      })().catch((error: unknown) => errors.push(errorText(error)))
      const pad = padFor(r.payloadBytes)
      const send = async (seqs: readonly number[], intendedAt: number) => {
        for (const s of seqs) await js.publish(subject, JSON.stringify(eventData(s, intendedAt, pad)))
      }
      try {
        await ready.waitLive(() => send([PRIMER], performance.now()), r.readyTimeoutMs)
      } catch (error) {
        await messages.close()
        throw error
      }
      return {
        send,
        errors,
        close: async () => {
          await messages.close()
        },
      }
    },
    close: async () => {
      await nc?.close().catch(() => undefined)
      nc = undefined
    },
  }
}

type XReadGroupReply = Array<[string, Array<[string, string[]]>]> | null

export const rawRedisPipe = (env: BenchEnv): Pipe => {
  let main: Redis | undefined
  const setup = async () => {
    if (main !== undefined) return main
    const url = env.redis?.url
    if (url === undefined) throw new Error("redis-server is not running")
    main = new Redis(url, { connectionName: "bench-raw-redis", lazyConnect: true })
    main.on("error", () => undefined)
    await main.connect()
    return main
  }
  return {
    id: "raw-redis",
    label: "raw ioredis (XADD + XREADGROUP/XACK)",
    transport: "redis-streams",
    kind: "raw",
    maxSubscribers: 1,
    open: async (r: OpenRequest): Promise<Session> => {
      const m = await setup()
      const key = `rawbench:${r.channel}`
      const errors: string[] = []
      const ready = readiness(1, r.onReceive)
      await m.xgroup("CREATE", key, "g", "$", "MKSTREAM")
      const reader = m.duplicate({ connectionName: "bench-raw-redis-reader" })
      reader.on("error", () => undefined)
      let closed = false
      const loop = (async () => {
        while (!closed) {
          const reply = (await reader.xreadgroup(
            "GROUP",
            "g",
            "c",
            "COUNT",
            500,
            "BLOCK",
            1000,
            "STREAMS",
            key,
            ">",
          )) as XReadGroupReply
          if (reply === null) continue
          const ids: string[] = []
          for (const [, entries] of reply) {
            for (const [id, fields] of entries) {
              ids.push(id)
              const d = JSON.parse(fields[1] ?? "") as { s: number; t: number }
              ready.onReceive(d.s, d.t, 0, performance.now())
            }
          }
          if (ids.length > 0) await m.xack(key, "g", ...ids)
        }
      })().catch((error: unknown) => {
        if (!closed) errors.push(errorText(error))
      })
      const pad = padFor(r.payloadBytes)
      const send = async (seqs: readonly number[], intendedAt: number) => {
        for (const s of seqs) await m.xadd(key, "*", "d", JSON.stringify(eventData(s, intendedAt, pad)))
      }
      const close = async () => {
        closed = true
        reader.disconnect()
        await loop
        await m.del(key)
      }
      try {
        await ready.waitLive(() => send([PRIMER], performance.now()), r.readyTimeoutMs)
      } catch (error) {
        await close()
        throw error
      }
      return { send, errors, close }
    },
    close: async () => {
      main?.disconnect()
      main = undefined
    },
  }
}
