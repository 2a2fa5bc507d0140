/**
 * The SQL of the outbox, built once per store for its (already validated and quoted)
 * schema. Every statement that must see one consistent state is a single statement,
 * so it runs in one snapshot even on an autocommit pool connection.
 *
 * @module
 */

import { createHash } from "node:crypto"
import type { Statement } from "../sql/executor.js"

const eventColumns = "o.xid, o.seq, o.id, o.type, o.data, o.headers, o.event_time"

/**
 * Branch of a read: rows of the address matching `where`, in read order, at most $3.
 * Each branch is an index range scan on (tenant, channel, xid, seq).
 */
const branch = (S: string, phase: 0 | 1, where: string): string =>
  `(SELECT ${phase} AS phase, ${eventColumns} FROM ${S}.outbox o
     WHERE o.tenant = $1 AND o.channel = $2 AND ${where}
     ORDER BY o.xid, o.seq LIMIT $3)`

// Rows not visible in the base snapshot ($4 = xmax, $5 = xip): committed after it.
const afterBase = (S: string): ReadonlyArray<string> => [
  branch(S, 1, "o.xid >= $4::xid8"),
  branch(S, 1, "o.xid = ANY($5::xid8[])"),
]

// Rest of a paged delta: invisible in `from` ($6 xmax, $7 xip), visible in `to` ($8 xmax,
// $9 xip), after the last delivered position ($10 xid, $11 seq).
const restOfDelta = (S: string): ReadonlyArray<string> => {
  const inTo = "o.xid < $8::xid8 AND o.xid <> ALL($9::xid8[]) AND (o.xid, o.seq) > ($10::xid8, $11::bigint)"
  return [
    branch(S, 0, `o.xid = ANY($7::xid8[]) AND ${inTo}`),
    branch(S, 0, `o.xid >= greatest($6::xid8, $10::xid8) AND ${inTo}`),
  ]
}

// Meta and the statement's own snapshot come back on every row (and on one row when
// there are no events), so cursor checks and the next cursor share the read's snapshot.
const readSql = (S: string, branches: ReadonlyArray<string>): string => `
SELECT m.epoch::text AS epoch, m.prune_xid::text AS prune_xid, m.prune_seq::text AS prune_seq,
       pg_current_snapshot()::text AS snapshot,
       r.phase, r.xid::text AS xid, r.seq::text AS seq, r.id::text AS id,
       r.type, r.data, r.headers, r.event_time
FROM ${S}.meta m
LEFT JOIN LATERAL (
  SELECT * FROM (${branches.join("\n    UNION ALL\n    ")}) u
  ORDER BY u.phase, u.xid, u.seq LIMIT $3
) r ON true
ORDER BY r.phase, r.xid, r.seq`

/**
 * The append statements: one event or several, with no wake-up, one, or several. Each is a
 * plain INSERT (plus the wake-ups in the same statement, so an append stays one round
 * trip) that drivers keep prepared: parsed and planned once per connection. Postgres
 * delivers each distinct (channel, payload) once per transaction, however many appends
 * sent it, so repeated appends in one transaction still wake each address once.
 *
 * Parameters are text (cast on the server) so every driver binds them alike: postgres.js
 * would JSON-encode a string bound to a jsonb parameter again. One event binds its fields
 * ($1-$7); several bind one JSON array of envelopes ($1), already encoded by makeEnvelope,
 * read with jsonb_to_recordset in array order (which reads JSON null as SQL NULL: hence
 * the coalesce back to a jsonb null). Wake-ups are ($n, $n+1) for one and a JSON
 * array of [channel, payload] pairs for several.
 *
 * Each shape comes twice. The guarded form (`ON CONFLICT (id) DO NOTHING`) makes
 * re-publishing an id a no-op instead of a unique violation that would abort the caller's
 * transaction. The `fresh` form leaves the guard out, for batches whose ids were all minted
 * by makeEnvelope and never written before (`claimFreshId`): no row can hold them, and the
 * guard is not free, since a speculative insertion probes the primary key before the insert
 * and logs a confirmation record per row after it.
 */
export interface AppendShapes {
  readonly one: Statement
  readonly oneNotifyOne: Statement
  readonly oneNotifyMany: Statement
  readonly many: Statement
  readonly manyNotifyOne: Statement
  readonly manyNotifyMany: Statement
}

/** The guarded statements, and the same shapes without the guard for fresh ids. */
export interface AppendStatements extends AppendShapes {
  readonly fresh: AppendShapes
}

const columns = "(id, tenant, channel, type, data, headers, event_time)"

const makeAppendShapes = (S: string, guarded: boolean): AppendShapes => {
  const guard = guarded ? "\nON CONFLICT (id) DO NOTHING" : ""
  const p = guarded ? "bus_append" : "bus_appendf"
  const one = `INSERT INTO ${S}.outbox ${columns}
VALUES ($1::text::uuid, $2::text, $3::text, $4::text, $5::text::jsonb, $6::text::jsonb, $7::text::timestamptz)${guard}`
  const many = `INSERT INTO ${S}.outbox ${columns}
SELECT e.id, e.tenant, e.channel, e.type, coalesce(e.data, 'null'::jsonb), e.headers, e."time"
FROM ROWS FROM (jsonb_to_recordset($1::text::jsonb)
       AS (id uuid, tenant text, channel text, type text, data jsonb, headers jsonb, "time" timestamptz))
     WITH ORDINALITY AS e(id, tenant, channel, type, data, headers, "time", n)
ORDER BY e.n${guard}`
  const notifyOne = (insert: string, at: number) =>
    `WITH i AS (${insert}\nRETURNING 1)\nSELECT count(*)::int AS notified FROM (SELECT pg_notify($${at}::text, $${at + 1}::text)) x`
  const notifyMany = (insert: string, at: number) =>
    `WITH i AS (${insert}\nRETURNING 1)
SELECT count(*)::int AS notified
FROM (SELECT pg_notify(n.v->>0, n.v->>1) FROM jsonb_array_elements($${at}::text::jsonb) AS n(v)) x`
  return {
    one: named(`${p}1`, one),
    oneNotifyOne: named(`${p}1n1`, notifyOne(one, 8)),
    oneNotifyMany: named(`${p}1n`, notifyMany(one, 8)),
    many: named(p, many),
    manyNotifyOne: named(`${p}n1`, notifyOne(many, 2)),
    manyNotifyMany: named(`${p}n`, notifyMany(many, 2)),
  }
}

const makeAppendStatements = (S: string): AppendStatements => ({
  ...makeAppendShapes(S, true),
  fresh: makeAppendShapes(S, false),
})

// A prepared statement's name is per connection, and one connection may serve stores of
// several schemas (or package versions): the name carries a hash of the text.
const named = (prefix: string, text: string): Statement => ({
  name: `${prefix}_${createHash("sha256").update(text).digest("hex").slice(0, 16)}`,
  text,
})

/** Every statement of one store. */
export interface OutboxQueries {
  readonly readSteady: string
  readonly readPaging: string
  /**
   * The two reads as named statements: every wake-up runs one, so the pool's connections
   * keep them prepared (planned once per connection, not on every read).
   */
  readonly reads: { readonly steady: Statement; readonly paging: Statement }
  readonly head: string
  readonly meta: string
  readonly append: AppendStatements
  readonly notify: string
  readonly deadLetter: string
  readonly deadLetters: string
  readonly prune: string
  readonly claimGroup: string
  readonly renewGroup: string
  readonly commitGroup: string
  readonly groupCursor: string
  readonly handled: string
  readonly markHandled: string
  readonly pruneInbox: string
  readonly releaseGroup: string
  readonly changedAddresses: string
}

/** Builds the statements for quoted schema `S`. */
export const makeQueries = (S: string): OutboxQueries => ({
  readSteady: readSql(S, afterBase(S)),
  readPaging: readSql(S, [...restOfDelta(S), ...afterBase(S)]),
  reads: {
    steady: named("bus_read", readSql(S, afterBase(S))),
    paging: named("bus_readp", readSql(S, [...restOfDelta(S), ...afterBase(S)])),
  },

  head: `SELECT epoch::text AS epoch, pg_current_snapshot()::text AS snapshot FROM ${S}.meta`,
  meta: `SELECT epoch::text AS epoch, schema_version FROM ${S}.meta`,

  append: makeAppendStatements(S),

  // Wake-ups as a JSON array of [channel, payload] pairs: text parameters only, so every
  // driver (Prisma, Effect's own protocol, Kysely, …) binds them the same way.
  notify: `SELECT count(*)::int AS notified FROM (SELECT pg_notify(n.v->>0, n.v->>1) FROM jsonb_array_elements($1::text::jsonb) AS n(v)) x`,

  // A group's letter goes into its inbox in the same statement (see DeadLetterStore.deadLetter):
  // a replay removes both in one transaction, so it never runs between the two writes.
  deadLetter: `
WITH d AS (
  INSERT INTO ${S}.dead_letters (event_id, tenant, channel, type, data, headers, event_time, reason, source, attempts, at)
  VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6::jsonb, $7::timestamptz, $8, $9, $10::int, coalesce($11::timestamptz, now()))
  RETURNING event_id, tenant, channel, source
)
INSERT INTO ${S}.group_inbox (tenant, channel, group_name, event_id)
SELECT tenant, channel, source, event_id FROM d WHERE source <> 'relay'
ON CONFLICT DO NOTHING`,

  deadLetters: `
SELECT event_id::text AS id, tenant, channel, type, data, headers, event_time, reason, source, attempts, at
FROM ${S}.dead_letters ORDER BY at DESC, seq DESC LIMIT $1`,

  // Deletes old rows, never of a transaction that a running one could still be behind
  // (xid below the deleting statement's own xmin), and raises the retention watermark
  // in the same statement, so a reader sees both or neither.
  prune: `
WITH doomed AS (
  SELECT id FROM ${S}.outbox
  WHERE event_time < now() - $1::bigint * interval '1 millisecond'
    AND xid < pg_snapshot_xmin(pg_current_snapshot())
    AND (NOT $2::boolean OR forwarded_at IS NOT NULL OR parked_at IS NOT NULL
         -- broker mode: only rows their partition's relay position covers (schema v4)
         OR pg_visible_in_snapshot(xid, (SELECT rp.covered FROM ${S}.relay_partitions rp
              WHERE rp.partition = ${S}.relay_partition(tenant, channel, (SELECT m.relay_partitions FROM ${S}.meta m)))))
  LIMIT $3
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${S}.outbox o USING doomed WHERE o.id = doomed.id RETURNING o.xid, o.seq
), top AS (
  SELECT xid, seq FROM deleted ORDER BY xid DESC, seq DESC LIMIT 1
), raised AS (
  UPDATE ${S}.meta m SET prune_xid = top.xid, prune_seq = top.seq, pruned_at = now()
  FROM top WHERE m.prune_xid IS NULL OR (top.xid, top.seq) > (m.prune_xid, m.prune_seq)
  RETURNING 1
)
SELECT (SELECT count(*) FROM deleted)::int AS deleted, (SELECT count(*) FROM raised)::int AS raised`,

  // Takes the group if it is free, ours, or its holder's lease ran out.
  claimGroup: `
INSERT INTO ${S}.consumer_groups AS g (tenant, channel, group_name, owner, lease_until)
VALUES ($1, $2, $3, $4, clock_timestamp() + $5::bigint * interval '1 millisecond')
ON CONFLICT (tenant, channel, group_name) DO UPDATE
SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until, updated_at = now()
WHERE g.owner IS NULL OR g.owner = EXCLUDED.owner OR g.lease_until IS NULL OR g.lease_until < clock_timestamp()
RETURNING g.cursor`,

  renewGroup: `
UPDATE ${S}.consumer_groups SET lease_until = clock_timestamp() + $5::bigint * interval '1 millisecond'
WHERE tenant = $1 AND channel = $2 AND group_name = $3 AND owner = $4
RETURNING 1`,

  // The position and, when $6 names an event, its inbox entry in one statement.
  commitGroup: `
WITH c AS (
  UPDATE ${S}.consumer_groups SET cursor = $5, updated_at = now()
  WHERE tenant = $1 AND channel = $2 AND group_name = $3 AND owner = $4
  RETURNING 1
), m AS (
  INSERT INTO ${S}.group_inbox (tenant, channel, group_name, event_id)
  SELECT $1, $2, $3, $6::text::uuid FROM c WHERE $6::text IS NOT NULL
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT 1 AS committed FROM c`,

  groupCursor: `SELECT cursor FROM ${S}.consumer_groups WHERE tenant = $1 AND channel = $2 AND group_name = $3`,

  handled: `
SELECT event_id::text AS id FROM ${S}.group_inbox
WHERE tenant = $1 AND channel = $2 AND group_name = $3 AND event_id = ANY($4::uuid[])`,

  // Written after a broker handler succeeded and before the broker's ack. Committed
  // without waiting for the WAL flush (synchronous_commit off, for this statement only): a
  // group's ack must not cost the database an fsync. A database crash can lose the last
  // few hundred milliseconds of entries; the only effect is that those events could be
  // handled again after a later flip.
  markHandled: `
INSERT INTO ${S}.group_inbox (tenant, channel, group_name, event_id)
SELECT $1, $2, $3, i.id FROM unnest($4::uuid[]) AS i(id), (SELECT set_config('synchronous_commit', 'off', true)) s
ON CONFLICT DO NOTHING`,

  pruneInbox: `
WITH d AS (
  DELETE FROM ${S}.group_inbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM ${S}.group_inbox WHERE handled_at < now() - $1::bigint * interval '1 millisecond' LIMIT $2
  ))
  RETURNING 1
)
SELECT count(*)::int AS deleted FROM d`,

  releaseGroup: `
UPDATE ${S}.consumer_groups SET owner = NULL, lease_until = NULL, updated_at = now()
WHERE tenant = $1 AND channel = $2 AND group_name = $3 AND owner = $4`,

  // The fallback poll: which watched addresses have rows committed since snapshot
  // ($3 xmax, $4 xip)? One statement per process, one index probe per address.
  changedAddresses: `
SELECT pg_current_snapshot()::text AS snapshot, w.tenant, w.channel
FROM (SELECT 1) one
LEFT JOIN LATERAL (
  SELECT w.tenant, w.channel FROM unnest($1::text[], $2::text[]) AS w(tenant, channel)
  -- Two index probes per address. Scalar sub-selects with LIMIT stay correlated: the
  -- planner cannot hash them into one scan of every address's recent rows.
  WHERE coalesce((SELECT true FROM ${S}.outbox o
                  WHERE o.tenant = w.tenant AND o.channel = w.channel AND o.xid >= $3::xid8 LIMIT 1), false)
     OR coalesce((SELECT true FROM ${S}.outbox o
                  WHERE o.tenant = w.tenant AND o.channel = w.channel AND o.xid = ANY($4::xid8[]) LIMIT 1), false)
) w ON true`,
})
