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

/** Every migration, oldest first. */
export const migrations: ReadonlyArray<Migration> = [
  { version: 1, name: "outbox", sql: v1 },
  { version: 2, name: "flip", sql: v2 },
  { version: 3, name: "lease index", sql: v3 },
]

/** The schema version this build of the package reads and writes. */
export const latestVersion: number = migrations[migrations.length - 1]!.version
