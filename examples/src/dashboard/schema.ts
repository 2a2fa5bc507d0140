import type pg from "pg"

/**
 * The demo application's own business tables: pipeline runs and their agent jobs. The
 * producer changes them and publishes the matching events in the same transaction, so
 * the outbox and these tables always agree.
 *
 * Every row carries a `version` that grows by one on each change; events carry the whole
 * row, so a page applies an event only when it is newer than what it shows. Runs are
 * archived (deleted) oldest first, and `meta.archived_through` records the highest
 * archived run id, so a late event of an archived run is recognised and ignored.
 *
 * `demo.alerts` is the other way to publish: the producer only INSERTs into it, and the
 * outbox's publish trigger (docs/sql.md) turns each row into an `alert.insert` event on the
 * `alerts` channel in the same transaction.
 *
 * @module
 */

/** Schema of the demo tables (the outbox lives in the bus's own schema, `bus`). */
export const demoSchema = "demo"

/** Drops and recreates the demo tables: every demo starts from an empty pipeline. */
export const resetSchema = async (db: pg.Pool): Promise<void> => {
  await db.query(`
    CREATE SCHEMA IF NOT EXISTS demo;
    DROP TABLE IF EXISTS demo.jobs, demo.runs, demo.meta, demo.alerts;
    CREATE TABLE demo.runs (
      id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      pipeline    text NOT NULL,
      title       text NOT NULL,
      status      text NOT NULL,
      version     int  NOT NULL,
      started_at  timestamptz NOT NULL,
      finished_at timestamptz
    );
    CREATE TABLE demo.jobs (
      id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      run_id      int  NOT NULL REFERENCES demo.runs (id) ON DELETE CASCADE,
      step        int  NOT NULL,
      name        text NOT NULL,
      agent       text,
      status      text NOT NULL,
      attempt     int  NOT NULL,
      version     int  NOT NULL,
      started_at  timestamptz,
      finished_at timestamptz,
      UNIQUE (run_id, step)
    );
    CREATE TABLE demo.meta (
      only_row         boolean PRIMARY KEY DEFAULT true CHECK (only_row),
      archived_through int NOT NULL DEFAULT 0
    );
    INSERT INTO demo.meta DEFAULT VALUES;
    -- Written with plain SQL only: a trigger publishes each new row (channel alerts,
    -- type alert.insert), the way an existing table joins the bus with no code.
    CREATE TABLE demo.alerts (
      id      int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      tenant  text NOT NULL,
      run_id  int  NOT NULL,
      message text NOT NULL,
      at      timestamptz NOT NULL DEFAULT now()
    );
    SELECT bus.attach_publish_trigger('demo.alerts', 'tenant', 'alerts', 'alert', 'row', ARRAY['INSERT']);
  `)
}

/** A run as the events and the snapshot carry it. */
export interface RunRow {
  readonly id: number
  readonly pipeline: string
  readonly title: string
  readonly status: "running" | "succeeded" | "failed"
  readonly version: number
  readonly startedAt: string
  readonly finishedAt: string | null
}

/** A job as the events and the snapshot carry it. */
export interface JobRow {
  readonly id: number
  readonly runId: number
  readonly step: number
  readonly name: string
  readonly agent: string | null
  readonly status: "queued" | "running" | "succeeded" | "failed" | "skipped"
  readonly attempt: number
  readonly version: number
  readonly startedAt: string | null
  readonly finishedAt: string | null
}

/** Column list that maps a `demo.runs` row to {@link RunRow}. */
export const runColumns = `id, pipeline, title, status, version,
  to_json(started_at) #>> '{}' AS "startedAt", to_json(finished_at) #>> '{}' AS "finishedAt"`

/** Column list that maps a `demo.jobs` row to {@link JobRow}. */
export const jobColumns = `id, run_id AS "runId", step, name, agent, status, attempt, version,
  to_json(started_at) #>> '{}' AS "startedAt", to_json(finished_at) #>> '{}' AS "finishedAt"`

/** What the dashboard shows, read in one snapshot. */
export interface PipelineState {
  readonly runs: ReadonlyArray<RunRow>
  readonly jobs: ReadonlyArray<JobRow>
  readonly archivedThrough: number
}

/** Reads runs, jobs and the archive mark in one statement (one snapshot). */
export const readState = async (db: pg.Pool | pg.PoolClient): Promise<PipelineState> => {
  const { rows } = await db.query<{ state: PipelineState }>(`
    SELECT json_build_object(
      'runs', coalesce((SELECT json_agg(r ORDER BY r.id) FROM (SELECT ${runColumns} FROM demo.runs) r), '[]'),
      'jobs', coalesce((SELECT json_agg(j ORDER BY j.id) FROM (SELECT ${jobColumns} FROM demo.jobs) j), '[]'),
      'archivedThrough', (SELECT archived_through FROM demo.meta)
    ) AS state`)
  return rows[0]!.state
}
