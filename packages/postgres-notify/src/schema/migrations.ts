/**
 * The versioned schema of the Postgres outbox. Each migration is applied once, in
 * order, inside the migration transaction; a migration that has shipped is never edited,
 * only followed by a new one. The SQL is kept in code (not in files next to the build)
 * so that bundlers and `node_modules` layouts can never separate it from the code that
 * reads the tables.
 *
 * `S` below is the quoted schema name.
 *
 * @module
 */

/** One schema migration. */
export interface Migration {
  /** Strictly increasing, starting at 1. */
  readonly version: number
  readonly name: string
  /** The SQL for a quoted schema name. Runs in one transaction with the others. */
  readonly sql: (schema: string) => string
}

const v1 = (S: string): string => `
-- The outbox. xid is the writing transaction's id: readers decide visibility by
-- snapshot (xid not visible in the cursor's snapshot = not delivered yet), never by
-- seq alone, because seq is taken at insert and transactions commit in another order.
CREATE TABLE ${S}.outbox (
  id uuid PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  seq bigint GENERATED ALWAYS AS IDENTITY,
  tenant text NOT NULL,
  channel text NOT NULL,
  type text NOT NULL,
  data jsonb NOT NULL,
  headers jsonb NOT NULL DEFAULT '{}'::jsonb,
  event_time timestamptz NOT NULL,
  -- Relay bookkeeping (only used when a broker transport forwards the outbox).
  lease_owner text,
  lease_until timestamptz,
  attempts integer NOT NULL DEFAULT 0,
  last_error text,
  forwarded_at timestamptz,
  parked_at timestamptz
);

-- Reads: one address, rows of given transactions or above a transaction id, in (xid, seq) order.
CREATE INDEX outbox_address_xid ON ${S}.outbox (tenant, channel, xid, seq);
-- Relay leases: unforwarded rows in insert order.
CREATE INDEX outbox_unforwarded ON ${S}.outbox (seq) WHERE forwarded_at IS NULL AND parked_at IS NULL;
-- Retention: rows are appended roughly in time order, so a BRIN index is tiny and enough.
CREATE INDEX outbox_event_time ON ${S}.outbox USING brin (event_time);

CREATE TABLE ${S}.dead_letters (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id uuid NOT NULL,
  tenant text NOT NULL,
  channel text NOT NULL,
  type text NOT NULL,
  data jsonb NOT NULL,
  headers jsonb NOT NULL,
  event_time timestamptz NOT NULL,
  reason text NOT NULL,
  source text NOT NULL,
  attempts integer NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_at ON ${S}.dead_letters (at DESC, seq DESC);

-- One row per consumer group: its acknowledged position and the member holding it.
CREATE TABLE ${S}.consumer_groups (
  tenant text NOT NULL,
  channel text NOT NULL,
  group_name text NOT NULL,
  cursor text NOT NULL DEFAULT 'beginning',
  owner text,
  lease_until timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, channel, group_name)
);

-- One row. epoch changes only when the outbox is recreated or restored (rotateEpoch),
-- so cursors from another outbox are refused instead of misread. prune_xid/prune_seq is
-- the highest (xid, seq) retention ever deleted: cursors that had not covered it expired.
CREATE TABLE ${S}.meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch uuid NOT NULL DEFAULT gen_random_uuid(),
  schema_version integer NOT NULL,
  prune_xid xid8,
  prune_seq bigint,
  pruned_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ${S}.meta (schema_version) VALUES (1);
`

const v2 = (S: string): string => `
-- Relays lease unforwarded rows in (xid, seq) order, so that every unforwarded row a
-- lease leaves out sorts after the ones it took: that bounds the outbox frontier each
-- relayed event carries (cursors across a transport flip, docs/flip.md).
DROP INDEX ${S}.outbox_unforwarded;
CREATE INDEX outbox_unforwarded ON ${S}.outbox (xid, seq) WHERE forwarded_at IS NULL AND parked_at IS NULL;

-- Each consumer group's inbox: the events it handled, on any transport. A group that moves
-- between transports (a flip) skips what it handled before; entries go with retention.
CREATE TABLE ${S}.group_inbox (
  tenant text NOT NULL,
  channel text NOT NULL,
  group_name text NOT NULL,
  event_id uuid NOT NULL,
  handled_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, channel, group_name, event_id)
);
CREATE INDEX group_inbox_handled_at ON ${S}.group_inbox USING brin (handled_at);
`

const v3 = (S: string): string => `
-- Relay leases find the addresses under a live lease through this index alone: only rows
-- under a lease (or whose relay died holding one) have lease_until set, a batch or so per
-- relay, so the lease statement no longer reads the whole backlog to find them.
CREATE INDEX outbox_leased ON ${S}.outbox (tenant, channel, lease_until)
  WHERE forwarded_at IS NULL AND parked_at IS NULL AND lease_until IS NOT NULL;
`

/** Relay partitions of a new outbox (fixed per outbox: the relay index is built on it). */
export const relayPartitions = 8

const v4 = (S: string): string => `
-- The relay reads the outbox as a log: per partition of addresses, by the same
-- snapshot-safe position subscribers use, storing one position per batch. Producers' rows
-- are never updated again; the v1-v3 lease columns stay only for rows relayed before.

-- An address's partition. hashtext is immutable, so the relay index can be built on it;
-- names never hold '/', so tenant || '/' || channel is one-to-one.
CREATE FUNCTION ${S}.relay_partition(tenant text, channel text, partitions integer) RETURNS integer
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT (hashtext(tenant || '/' || channel) & 2147483647) % partitions $$;

ALTER TABLE ${S}.meta ADD COLUMN relay_partitions integer NOT NULL DEFAULT ${relayPartitions};

-- The relay's reads: one partition's rows in (xid, seq) order. It replaces the two
-- partial indexes of the row-state relay, which every append had to maintain.
CREATE INDEX outbox_relay ON ${S}.outbox (${S}.relay_partition(tenant, channel, ${relayPartitions}), xid, seq);
DROP INDEX ${S}.outbox_unforwarded;
DROP INDEX ${S}.outbox_leased;

-- One row per partition: its position (an outbox cursor), addresses served ahead of it
-- (fairness), and the relay holding it. covered is the snapshot part of the position:
-- every row visible in it was forwarded (retention keeps the rest in broker mode).
CREATE TABLE ${S}.relay_partitions (
  partition integer PRIMARY KEY,
  position text,
  covered pg_snapshot NOT NULL,
  ahead jsonb NOT NULL DEFAULT '{}'::jsonb,
  owner text,
  lease_until timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Live relays, so each takes a fair share of the partitions.
CREATE TABLE ${S}.relay_members (
  owner text PRIMARY KEY,
  seen_until timestamptz NOT NULL
);

-- Where each partition starts: below its oldest row a v3 relay had not forwarded or
-- parked yet, or everything so far when there is none. Rows past that which a v3 relay
-- did forward are skipped by the relay's read (forwarded_at / parked_at), so an upgrade
-- neither loses nor re-sends a row.
INSERT INTO ${S}.relay_partitions (partition, covered)
SELECT p, CASE WHEN b IS NULL THEN pg_current_snapshot() ELSE (
         SELECT format('%s:%s:%s', least(pg_snapshot_xmin(s), b), b,
                       coalesce((SELECT string_agg(x::text, ',' ORDER BY x) FROM pg_snapshot_xip(s) x WHERE x < b), ''))::pg_snapshot
         FROM (SELECT pg_current_snapshot() AS s) cur) END
FROM generate_series(0, ${relayPartitions} - 1) p
LEFT JOIN LATERAL (
  SELECT min(o.xid) AS b FROM ${S}.outbox o
  WHERE ${S}.relay_partition(o.tenant, o.channel, ${relayPartitions}) = p
    AND o.forwarded_at IS NULL AND o.parked_at IS NULL
) first ON true;
`

/** Every migration, oldest first. */
export const migrations: ReadonlyArray<Migration> = [
  { version: 1, name: "outbox", sql: v1 },
  { version: 2, name: "flip", sql: v2 },
  { version: 3, name: "lease index", sql: v3 },
  { version: 4, name: "log relay", sql: v4 },
]

/** The schema version this build of the package reads and writes. */
export const latestVersion: number = migrations[migrations.length - 1]!.version
