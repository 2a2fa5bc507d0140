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

import { relayChannel } from "../names.js"

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

/** `"name"` to name (schema names are lower-case identifiers: nothing to unescape). */
const unquoted = (S: string): string => S.replace(/^"|"$/g, "")

const v5 = (S: string): string => `
-- Publishing from SQL: ${S}.publish appends an event inside the calling transaction with
-- the guarantees of the SDK's publish (the same row, a UUIDv7 id, the same name rules and
-- size limit, refused with a clear error before anything is written; wake-ups as the bus
-- processes' notify mode says). Triggers, other languages and psql publish through it.

-- What ${S}.publish sends when it commits: the notify mode of the bus processes, written by
-- each bus's outbox store when it starts (addresses on postgres-notify, none on a broker,
-- where producers must not take NOTIFY's commit lock and the relay polls instead).
ALTER TABLE ${S}.meta
  ADD COLUMN sql_notify text NOT NULL DEFAULT 'addresses'
    CHECK (sql_notify IN ('addresses', 'relay', 'both', 'none')),
  ADD COLUMN sql_max_event_bytes integer NOT NULL DEFAULT 1048576 CHECK (sql_max_event_bytes > 0);

-- A UUIDv7 (RFC 9562): the 48-bit Unix time in ms over a random v4 UUID, version bits set
-- to 7. Postgres 18 has uuidv7() built in; this one works on every supported version.
CREATE FUNCTION ${S}.uuidv7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

-- The core name rule (tenant, channel): 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit.
CREATE FUNCTION ${S}.check_name(field text, value text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF value IS NULL OR value = '' THEN
    RAISE EXCEPTION 'bus.publish: % must not be empty', field USING ERRCODE = '22023';
  ELSIF length(value) > 64 THEN
    RAISE EXCEPTION 'bus.publish: % is % characters; the limit is 64', field, length(value) USING ERRCODE = '22023';
  ELSIF value !~ '^[A-Za-z0-9_-]+$' THEN
    RAISE EXCEPTION 'bus.publish: % % contains %; only A-Z, a-z, 0-9, "_" and "-" are allowed',
      field, to_json(value), to_json(substring(value FROM '[^A-Za-z0-9_-]')) USING ERRCODE = '22023';
  ELSIF value !~ '^[A-Za-z0-9]' THEN
    RAISE EXCEPTION 'bus.publish: % % must start with a letter or digit', field, to_json(value) USING ERRCODE = '22023';
  END IF;
  RETURN value;
END
$$;

CREATE FUNCTION ${S}.publish(
  tenant text, channel text, type text, data jsonb DEFAULT 'null'::jsonb,
  headers jsonb DEFAULT '{}'::jsonb, id uuid DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  m record;
  event_id uuid := coalesce(id, ${S}.uuidv7());
  bytes integer;
BEGIN
  PERFORM ${S}.check_name('tenant', tenant);
  PERFORM ${S}.check_name('channel', channel);
  IF type IS NULL OR type = '' OR length(type) > 256 THEN
    RAISE EXCEPTION 'bus.publish: event type must be a non-empty string of at most 256 characters' USING ERRCODE = '22023';
  END IF;
  IF id IS NOT NULL AND substring(id::text FROM 15 FOR 1) <> '7' THEN
    RAISE EXCEPTION 'bus.publish: id must be a UUIDv7' USING ERRCODE = '22023';
  END IF;
  headers := coalesce(headers, '{}'::jsonb);
  IF jsonb_typeof(headers) <> 'object'
     OR EXISTS (SELECT 1 FROM jsonb_each(headers) h WHERE jsonb_typeof(h.value) <> 'string') THEN
    RAISE EXCEPTION 'bus.publish: headers must be an object of strings' USING ERRCODE = '22023';
  END IF;
  SELECT sql_notify, sql_max_event_bytes INTO m FROM ${S}.meta;
  -- The event as transports carry it, measured as the SDK measures it (compact JSON would
  -- be a little smaller than jsonb's text, so this errs on the side of refusing).
  bytes := octet_length(coalesce(data, 'null'::jsonb)::text) + octet_length(headers::text)
           + octet_length(tenant) + octet_length(channel) + octet_length(type) + 120;
  IF bytes > m.sql_max_event_bytes THEN
    RAISE EXCEPTION 'bus.publish: event is % bytes encoded; the limit is %', bytes, m.sql_max_event_bytes
      USING ERRCODE = '54000';
  END IF;
  INSERT INTO ${S}.outbox (id, tenant, channel, type, data, headers, event_time)
  VALUES (event_id, tenant, channel, type, coalesce(data, 'null'::jsonb), headers, clock_timestamp());
  -- Postgres folds a NOTIFY identical in channel and payload to one per transaction: one
  -- wake-up per address (or one for the relay) however many events the transaction holds.
  IF m.sql_notify IN ('addresses', 'both') THEN
    PERFORM pg_notify(
      'bus_' || left(encode(sha256(
        convert_to('address', 'UTF8') || '\\x00'::bytea || convert_to('${unquoted(S)}', 'UTF8') || '\\x00'::bytea
        || convert_to(tenant, 'UTF8') || '\\x00'::bytea || convert_to(channel, 'UTF8')), 'hex'), 32),
      '1:' || tenant || ':' || channel);
  END IF;
  IF m.sql_notify IN ('relay', 'both') THEN
    PERFORM pg_notify('${relayChannel(unquoted(S))}', '1');
  END IF;
  RETURN event_id;
END
$$;

-- A row trigger that publishes every INSERT, UPDATE and DELETE of a table. Arguments:
-- tenant column, channel, type prefix (the event type is prefix.insert / .update /
-- .delete), payload: 'row' (the whole row), 'columns:a,b' (those columns) or 'key:col'
-- (a pointer for wide rows: {"table": …, "key": {"col": value}}).
CREATE FUNCTION ${S}.publish_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
  payload text := TG_ARGV[3];
  data jsonb;
BEGIN
  IF payload = 'row' THEN
    data := r;
  ELSIF payload LIKE 'columns:%' THEN
    SELECT coalesce(jsonb_object_agg(c, r -> c), '{}'::jsonb) INTO data
    FROM unnest(string_to_array(substring(payload FROM 9), ',')) AS c;
  ELSE
    data := jsonb_build_object('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
      'key', jsonb_build_object(substring(payload FROM 5), r -> substring(payload FROM 5)));
  END IF;
  PERFORM ${S}.publish(r ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2] || '.' || lower(TG_OP), data);
  RETURN NULL;
END
$$;

-- Attaches the publish trigger to a table, checking every argument first (so a typo fails
-- here, not on the table's next write). The trigger is named bus_publish_<channel>.
CREATE FUNCTION ${S}.attach_publish_trigger(
  target regclass, tenant_column text, channel text, type_prefix text,
  payload text DEFAULT 'row', operations text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE']
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  trigger_name text := 'bus_publish_' || channel;
  cols text[];
  missing text;
  ops text;
BEGIN
  PERFORM ${S}.check_name('channel', channel);
  IF type_prefix IS NULL OR type_prefix = '' OR length(type_prefix) > 240 THEN
    RAISE EXCEPTION 'bus.attach_publish_trigger: type_prefix must be a non-empty string of at most 240 characters' USING ERRCODE = '22023';
  END IF;
  cols := ARRAY[tenant_column];
  IF payload LIKE 'columns:%' THEN
    cols := cols || string_to_array(substring(payload FROM 9), ',');
  ELSIF payload LIKE 'key:%' THEN
    cols := cols || substring(payload FROM 5);
  ELSIF payload IS DISTINCT FROM 'row' THEN
    RAISE EXCEPTION 'bus.attach_publish_trigger: payload must be ''row'', ''columns:a,b'' or ''key:column''; got %', to_json(payload) USING ERRCODE = '22023';
  END IF;
  SELECT string_agg(c, ', ') INTO missing FROM unnest(cols) c
  WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = target AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'bus.attach_publish_trigger: % has no column %', target, missing USING ERRCODE = '42703';
  END IF;
  IF operations IS NULL OR cardinality(operations) = 0
     OR EXISTS (SELECT 1 FROM unnest(operations) o WHERE upper(o) NOT IN ('INSERT', 'UPDATE', 'DELETE')) THEN
    RAISE EXCEPTION 'bus.attach_publish_trigger: operations must be some of INSERT, UPDATE, DELETE' USING ERRCODE = '22023';
  END IF;
  SELECT string_agg(DISTINCT upper(o), ' OR ') INTO ops FROM unnest(operations) o;
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_name, target);
  EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION ${S}.publish_trigger(%L, %L, %L, %L)',
    trigger_name, ops, target, tenant_column, channel, type_prefix, payload);
  RETURN trigger_name;
END
$$;

CREATE FUNCTION ${S}.detach_publish_trigger(target regclass, channel text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = target AND tgname = 'bus_publish_' || channel) THEN
    RETURN false;
  END IF;
  EXECUTE format('DROP TRIGGER %I ON %s', 'bus_publish_' || channel, target);
  RETURN true;
END
$$;
`

const v6 = (S: string): string => `
-- Consumer groups across tenants (consume with tenant "*"): members of a (channel, group)
-- register with a lease they renew, and hold a lease on each address (tenant) they run, so
-- two members never run one address at once. An address lease is as live as its member:
-- renewing the member renews them all in one write.
CREATE TABLE ${S}.group_members (
  channel text NOT NULL,
  group_name text NOT NULL,
  member text NOT NULL,
  seen_until timestamptz NOT NULL,
  PRIMARY KEY (channel, group_name, member)
);
CREATE TABLE ${S}.group_leases (
  channel text NOT NULL,
  group_name text NOT NULL,
  tenant text NOT NULL,
  member text NOT NULL,
  taken_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (channel, group_name, tenant)
);
CREATE INDEX group_leases_member ON ${S}.group_leases (channel, group_name, member);
`

/** Every migration, oldest first. */
export const migrations: ReadonlyArray<Migration> = [
  { version: 1, name: "outbox", sql: v1 },
  { version: 2, name: "flip", sql: v2 },
  { version: 3, name: "lease index", sql: v3 },
  { version: 4, name: "log relay", sql: v4 },
  { version: 5, name: "sql publish", sql: v5 },
  { version: 6, name: "groups across tenants", sql: v6 },
]

/** The schema version this build of the package reads and writes. */
export const latestVersion: number = migrations[migrations.length - 1]!.version
