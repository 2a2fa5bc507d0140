/**
 * The relay's statements (schema v4): the outbox read as a partitioned log, partition
 * leases and live relays. Built once per store for its quoted schema `S` and partition
 * count `N`; the partition expression must match the `outbox_relay` index's exactly, so the
 * planner reads a partition as one index range.
 *
 * @module
 */

import { createHash } from "node:crypto"
import type { Statement } from "../sql/executor.js"

/** Every relay statement of one store; the ones run per batch are prepared (named). */
export interface RelayQueries {
  /** Partition scope: $1 partition; then $2 limit, $3 xmax, $4 xip (and paging: $5-$10). */
  readonly readPartitionSteady: Statement
  readonly readPartitionPaging: Statement
  /** Address scope: $1 tenant, $2 channel; then $3 limit, $4 xmax, $5 xip (and paging: $6-$11). */
  readonly readAddressSteady: Statement
  readonly readAddressPaging: Statement
  readonly pending: Statement
  readonly claim: string
  readonly commit: Statement
  readonly renew: string
  readonly release: string
  readonly heartbeat: string
  readonly heldByOthers: string
  readonly backlog: string
  readonly staleStatistics: string
  readonly analyze: string
}

/** A statement prepared under a name unique to its text (schema and partition count included). */
const named = (text: string): Statement => ({
  name: `bus_relay_${createHash("sha256").update(text).digest("hex").slice(0, 16)}`,
  text,
})

const partitionExpr = (S: string, N: number, alias: string) =>
  `${S}.relay_partition(${alias}.tenant, ${alias}.channel, ${N})`

/**
 * A snapshot-safe read of rows in `scope` (see `cursor.ts`): the union of index range
 * scans, each in (xid, seq) order and cut at the limit. Rows a v3 relay already forwarded
 * or parked are skipped (schema upgrades). `$k` numbering starts after the scope's own
 * parameters (`base`). `event_time` comes back as the ISO-8601 text an envelope carries
 * (UTC, milliseconds, truncated as `Date#toISOString` of the parsed value would be), so the
 * relay parses and formats no date per row.
 */
const readSql = (S: string, scope: string, base: number, paging: boolean): string => {
  const $ = (n: number) => `$${base + n}`
  const branch = (phase: 0 | 1, where: string) =>
    `(SELECT ${phase} AS phase, o.xid, o.seq, o.id, o.tenant, o.channel, o.type, o.data, o.headers, o.event_time
      FROM ${S}.outbox o
      WHERE ${scope} AND ${where} AND o.forwarded_at IS NULL AND o.parked_at IS NULL
      ORDER BY o.xid, o.seq LIMIT ${$(1)})`
  // Committed after the base snapshot ($2 xmax, $3 xip).
  const afterBase = [branch(1, `o.xid >= ${$(2)}::xid8`), branch(1, `o.xid = ANY(${$(3)}::xid8[])`)]
  // The rest of a paged delta: invisible in `from` ($4, $5), visible in `to` ($6, $7), after ($8, $9).
  const inTo = `o.xid < ${$(6)}::xid8 AND o.xid <> ALL(${$(7)}::xid8[]) AND (o.xid, o.seq) > (${$(8)}::xid8, ${$(9)}::bigint)`
  const restOfDelta = [
    branch(0, `o.xid = ANY(${$(5)}::xid8[]) AND ${inTo}`),
    branch(0, `o.xid >= greatest(${$(4)}::xid8, ${$(8)}::xid8) AND ${inTo}`),
  ]
  const branches = paging ? [...restOfDelta, ...afterBase] : afterBase
  return `
SELECT m.epoch::text AS epoch, m.prune_xid::text AS prune_xid, m.prune_seq::text AS prune_seq,
       pg_current_snapshot()::text AS snapshot,
       r.phase, r.xid::text AS xid, r.seq::text AS seq, r.id::text AS id, r.tenant, r.channel,
       r.type, r.data, r.headers,
       to_char(r.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS event_time
FROM ${S}.meta m
LEFT JOIN LATERAL (
  SELECT * FROM (${branches.join("\n    UNION ALL\n    ")}) u
  ORDER BY u.phase, u.xid, u.seq LIMIT ${$(1)}
) r ON true
ORDER BY r.phase, r.xid, r.seq`
}

/** Builds the relay statements for quoted schema `S` with `N` partitions. */
export const makeRelayQueries = (S: string, N: number): RelayQueries => {
  const part = `${partitionExpr(S, N, "o")} = $1::int`
  const address = "o.tenant = $1 AND o.channel = $2"
  const lease = (n: string) => `clock_timestamp() + ${n}::bigint * interval '1 millisecond'`
  return {
    readPartitionSteady: named(readSql(S, part, 1, false)),
    readPartitionPaging: named(readSql(S, part, 1, true)),
    readAddressSteady: named(readSql(S, address, 2, false)),
    readAddressPaging: named(readSql(S, address, 2, true)),

    // Addresses with rows the position may not cover: a loose index scan over the address
    // index (one probe per address, never a read of any address's backlog), each address
    // then checked with two index probes. $1 partition, ($2, $3) start after, $4 xmax, $5 xip,
    // $6 limit. The recursion is evaluated lazily, so it stops at the limit.
    pending: named(`
WITH RECURSIVE addr AS (
  (SELECT o.tenant, o.channel FROM ${S}.outbox o
   WHERE (o.tenant, o.channel) > ($2::text, $3::text) ORDER BY o.tenant, o.channel LIMIT 1)
  UNION ALL
  SELECT n.tenant, n.channel FROM addr a CROSS JOIN LATERAL (
    SELECT o.tenant, o.channel FROM ${S}.outbox o
    WHERE (o.tenant, o.channel) > (a.tenant, a.channel) ORDER BY o.tenant, o.channel LIMIT 1
  ) n
)
SELECT a.tenant, a.channel FROM addr a
WHERE ${partitionExpr(S, N, "a")} = $1::int
  AND (EXISTS (SELECT 1 FROM ${S}.outbox o WHERE o.tenant = a.tenant AND o.channel = a.channel AND o.xid >= $4::xid8)
    OR EXISTS (SELECT 1 FROM ${S}.outbox o WHERE o.tenant = a.tenant AND o.channel = a.channel AND o.xid = ANY($5::xid8[])))
LIMIT $6`),

    // Free, ours, or its holder stopped renewing: then it is ours until lease_until.
    // `fresh`: no relay stored a position yet and no row of the partition is older than
    // where it starts, so nothing of it can be on a broker (a v3 upgrade's rows, forwarded
    // by the old relay, make it not fresh). One index probe (outbox_relay), per claim.
    claim: `
UPDATE ${S}.relay_partitions rp SET owner = $2, lease_until = ${lease("$3")}, updated_at = now()
WHERE rp.partition = $1 AND (rp.owner IS NULL OR rp.owner = $2 OR rp.lease_until IS NULL OR rp.lease_until < clock_timestamp())
RETURNING rp.position, rp.covered::text AS covered, rp.ahead, (SELECT m.epoch::text FROM ${S}.meta m) AS epoch,
  rp.position IS NULL AND NOT EXISTS (
    SELECT 1 FROM ${S}.outbox o
    WHERE ${partitionExpr(S, N, "o")} = $1::int AND o.xid < pg_snapshot_xmax(rp.covered)) AS fresh`,

    // Once per batch. Committed without waiting for the WAL flush (for this statement only):
    // a database crash can lose the last positions, and the relay then re-sends rows the
    // broker drops by event id. A relay's batch must not cost an fsync.
    commit: named(`
UPDATE ${S}.relay_partitions SET position = $3, covered = $4::pg_snapshot, ahead = $5::jsonb,
       lease_until = ${lease("$6")}, updated_at = now()
FROM (SELECT set_config('synchronous_commit', 'off', true)) s
WHERE partition = $1 AND owner = $2
RETURNING 1 AS held`),

    renew: `
UPDATE ${S}.relay_partitions SET lease_until = ${lease("$3")}
WHERE partition = $1 AND owner = $2
RETURNING 1 AS held`,

    release: `UPDATE ${S}.relay_partitions SET owner = NULL, lease_until = NULL WHERE partition = $1 AND owner = $2`,

    // This relay plus the others seen within their lease; long-gone members are deleted.
    heartbeat: `
WITH up AS (
  INSERT INTO ${S}.relay_members (owner, seen_until) VALUES ($1, ${lease("$2")})
  ON CONFLICT (owner) DO UPDATE SET seen_until = EXCLUDED.seen_until
  RETURNING 1
), gone AS (
  DELETE FROM ${S}.relay_members WHERE seen_until < clock_timestamp() - interval '10 minutes' RETURNING 1
)
SELECT (count(*) FILTER (WHERE owner <> $1 AND seen_until >= clock_timestamp()) + 1)::int AS live
FROM ${S}.relay_members`,

    heldByOthers: `
SELECT partition FROM ${S}.relay_partitions
WHERE owner IS NOT NULL AND owner <> $1 AND lease_until >= clock_timestamp()`,

    // Statistics older than a fifth of the table (a bulk load autovacuum has not caught up
    // with): the planner would think the backlog is a few rows and sort all of it per page.
    staleStatistics: `
SELECT coalesce(s.n_mod_since_analyze > greatest(10000, c.reltuples * 0.2), true) AS stale
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = '${S}.outbox'::regclass`,
    analyze: `ANALYZE ${S}.outbox`,

    // Rows past each partition's covered snapshot: an upper bound (rows sent ahead of the
    // position count too), read as one index range per partition.
    backlog: `
SELECT coalesce(sum(c.n), 0)::bigint::text AS n
FROM ${S}.relay_partitions rp CROSS JOIN LATERAL (
  SELECT count(*) AS n FROM ${S}.outbox o
  WHERE ${partitionExpr(S, N, "o")} = rp.partition
    AND o.xid >= pg_snapshot_xmin(rp.covered) AND NOT pg_visible_in_snapshot(o.xid, rp.covered)
    AND o.forwarded_at IS NULL AND o.parked_at IS NULL
) c`,
  }
}
