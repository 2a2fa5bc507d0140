import { replayedHeader } from "@bus/core/adapter"
import pg from "pg"
import { schemaName } from "./schema/identifier.js"

/**
 * Replaying dead letters of the outbox: events the relay parked (the broker refused them
 * for good) and events a consumer group gave up on (on postgres-notify). A replay publishes
 * the event again through the outbox, with the same id, so that:
 *
 * - it is delivered in order with everything committed after the replay (a new position:
 *   the old row, if retention still holds it, is removed in the same transaction so the
 *   event exists once in the outbox);
 * - consumer groups that already handled it skip it (their inbox holds the id), and the
 *   group that gave up on it handles it again (its inbox entry is removed);
 * - the relay forwards it again (a relay-parked event never reached the broker).
 *
 * Subscribers without a group that already received it receive it again (at its new
 * position): they dedupe by id if they must. Dead letters kept by a broker's consumer
 * groups (NATS, Redis dead-letter streams) are not in the outbox and are not replayed here.
 *
 * @module
 */

/** What {@link replayDeadLetters} did. */
export interface ReplayResult {
  /** Replayed events: their id, address, and who had given up on them (`relay` or the group). */
  readonly replayed: ReadonlyArray<{
    readonly id: string
    readonly tenant: string
    readonly channel: string
    readonly source: string
  }>
  /** Ids with no dead letter in the outbox. */
  readonly missing: ReadonlyArray<string>
}

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** The ids of `ids` that are not event ids (UUIDs): {@link replayDeadLetters} refuses them. */
export const invalidEventIds = (ids: ReadonlyArray<string>): Array<string> =>
  ids.filter((id) => !uuid.test(id))

/**
 * Replays the dead letters of `ids` in one transaction (all or nothing), removing them from
 * the dead-letter table. Ids that are not dead letters are reported as `missing` and change
 * nothing.
 *
 * @example
 * ```ts
 * import { replayDeadLetters } from "@bus/postgres-notify/adapter"
 * import { replayedHeader } from "@bus/core/adapter"
 * import pg from "pg"
 *
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL })
 * const { replayed, missing } = await replayDeadLetters({ pool }, ["0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"])
 * console.log(replayed.length, missing)
 * ```
 */
export const replayDeadLetters = async (
  target:
    | { readonly pool: pg.Pool; readonly schema?: string }
    | { readonly connectionString: string; readonly schema?: string },
  ids: ReadonlyArray<string>,
): Promise<ReplayResult> => {
  const bad = invalidEventIds(ids)
  if (bad.length > 0) throw new TypeError(`replayDeadLetters: not event ids (UUIDs): ${bad.join(", ")}`)
  const S = schemaName(target.schema ?? "bus").quoted
  const own =
    "connectionString" in target
      ? new pg.Client({ connectionString: target.connectionString, application_name: "bus-replay" })
      : undefined
  if (own !== undefined) {
    own.on("error", () => {})
    await own.connect()
  }
  const client = own ?? (await (target as { pool: pg.Pool }).pool.connect())
  try {
    await client.query("BEGIN")
    await client.query("SET LOCAL statement_timeout = '30s'")
    const { rows } = await client.query<{
      id: string
      tenant: string
      channel: string
      type: string
      data: unknown
      headers: unknown
      source: string
    }>(
      `SELECT DISTINCT ON (event_id) event_id::text AS id, tenant, channel, type, data, headers, source
       FROM ${S}.dead_letters WHERE event_id = ANY($1::uuid[]) ORDER BY event_id, at DESC, seq DESC`,
      [ids],
    )
    const found = new Set(rows.map((r) => r.id))
    if (rows.length > 0) {
      const list = rows.map((r) => r.id)
      // Once in the outbox: the old row (if retention kept it) goes, the event comes back at a new position.
      await client.query(`DELETE FROM ${S}.outbox WHERE id = ANY($1::uuid[])`, [list])
      for (const r of rows) {
        if (r.source !== "relay")
          await client.query(
            `DELETE FROM ${S}.group_inbox WHERE tenant = $1 AND channel = $2 AND group_name = $3 AND event_id = $4::uuid`,
            [r.tenant, r.channel, r.source, r.id],
          )
        // The SQL publish function: the same checks and wake-ups as any publish.
        await client.query(`SELECT ${S}.publish($1, $2, $3, $4::jsonb, $5::jsonb, $6::uuid)`, [
          r.tenant,
          r.channel,
          r.type,
          JSON.stringify(r.data),
          // Marked, so groups that handled it before skip it even when it arrives live.
          JSON.stringify({
            ...(r.headers as Record<string, string>),
            [replayedHeader]: new Date().toISOString(),
          }),
          r.id,
        ])
      }
      await client.query(`DELETE FROM ${S}.dead_letters WHERE event_id = ANY($1::uuid[])`, [list])
    }
    await client.query("COMMIT")
    return {
      replayed: rows.map((r) => ({ id: r.id, tenant: r.tenant, channel: r.channel, source: r.source })),
      missing: ids.filter((id) => !found.has(id.toLowerCase())),
    }
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {})
    throw error
  } finally {
    if (own !== undefined) await own.end().catch(() => {})
    else (client as pg.PoolClient).release()
  }
}
