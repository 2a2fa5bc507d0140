import type pg from "pg"
import { CliError, postgresError } from "./errors.js"
import { withOutboxClient } from "./outboxClient.js"
import type { Out } from "./style.js"

/**
 * `bus trigger`: attaches the outbox's publish trigger to an existing table, so every
 * INSERT, UPDATE and DELETE of it publishes an event in the same transaction with no
 * application code (the SQL functions are in the schema since version 5; docs/sql.md).
 * The checks live in the SQL functions themselves, so psql users and this command get the
 * same errors.
 *
 * @module
 */

export interface TriggerOptions {
  readonly url: string
  readonly schema: string
  readonly action: "attach" | "detach" | "list"
  readonly table?: string
  readonly tenantColumn?: string
  readonly channel?: string
  readonly type?: string
  readonly columns?: string
  readonly key?: string
  readonly on?: string
  readonly json: boolean
  readonly out: Out
}

const need = (value: string | undefined, flag: string, usage: string): string => {
  if (value === undefined || value === "") throw new CliError(`${flag} is required: ${usage}`, 2)
  return value
}

export const attachUsage =
  "bus trigger attach <table> --tenant-column <column> --channel <channel> --type <prefix> [--columns a,b | --key <column>] [--on insert,update,delete]"

export const trigger = (o: TriggerOptions): Promise<void> =>
  // The client's statement_timeout bounds a statement waiting on a lock (an ALTER on a busy table).
  withOutboxClient(o.url, o.schema, (client) => runTrigger(o, client))

const runTrigger = async (o: TriggerOptions, client: pg.Client): Promise<void> => {
  try {
    if (o.action === "list") {
      const { rows } = await client.query<{ table: string; name: string; args: string; events: string }>(
        `SELECT t.tgrelid::regclass::text AS table, t.tgname AS name,
                encode(t.tgargs, 'escape') AS args,
                concat_ws(' OR ', CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
                          CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END,
                          CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END) AS events
         FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.proname = 'publish_trigger' AND n.nspname = $1 ORDER BY 1, 2`,
        [o.schema],
      )
      const list = rows.map((r) => {
        const [tenantColumn, channel, type, payload] = r.args.split("\\000")
        return { table: r.table, trigger: r.name, on: r.events, tenantColumn, channel, type, payload }
      })
      if (o.json) o.out.write(`${JSON.stringify(list)}\n`)
      else if (list.length === 0) o.out.write("no publish triggers\n")
      else
        for (const t of list)
          o.out.write(
            `${t.table}: ${t.on} → channel ${t.channel}, type ${t.type}.<op>, tenant from ${t.tenantColumn}, payload ${t.payload}\n`,
          )
      return
    }
    const table = need(o.table, "<table>", attachUsage)
    const channel = need(o.channel, "--channel", attachUsage)
    if (o.action === "detach") {
      const { rows } = await client.query<{ d: boolean }>(
        `SELECT "${o.schema}".detach_publish_trigger($1::regclass, $2) AS d`,
        [table, channel],
      )
      o.out.write(
        rows[0]?.d
          ? `detached bus_publish_${channel} from ${table}\n`
          : `${table} has no trigger bus_publish_${channel}\n`,
      )
      return
    }
    if (o.columns !== undefined && o.key !== undefined)
      throw new CliError("give --columns or --key, not both", 2)
    const payload =
      o.columns !== undefined ? `columns:${o.columns}` : o.key !== undefined ? `key:${o.key}` : "row"
    const operations = (o.on ?? "insert,update,delete").split(",").map((s) => s.trim().toUpperCase())
    const { rows } = await client.query<{ name: string }>(
      `SELECT "${o.schema}".attach_publish_trigger($1::regclass, $2, $3, $4, $5, $6::text[]) AS name`,
      [
        table,
        need(o.tenantColumn, "--tenant-column", attachUsage),
        channel,
        need(o.type, "--type", attachUsage),
        payload,
        operations,
      ],
    )
    o.out.write(
      o.json
        ? `${JSON.stringify({ table, trigger: rows[0]?.name, channel, payload, on: operations })}\n`
        : `attached ${rows[0]?.name} to ${table}: ${operations.join(", ")} publish to channel ${channel} (type ${o.type}.<op>, payload ${payload})\n`,
    )
  } catch (error) {
    if (error instanceof CliError) throw error
    const e = error as { code?: string; message?: string }
    // The SQL functions' own refusals (bad names, missing columns, no such table) are the message.
    if (e.code === "22023" || e.code === "42703" || e.code === "42P01" || e.code === "42883")
      throw new CliError(
        e.code === "42883"
          ? `schema ${o.schema} has no publish trigger functions: run bus migrate`
          : String(e.message),
        1,
      )
    throw postgresError(error, o.url, o.schema)
  }
}
