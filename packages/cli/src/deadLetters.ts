import { invalidEventIds, replayDeadLetters } from "@bus/postgres-notify/adapter"
import { CliError, postgresError } from "./errors.js"
import { withOutboxClient } from "./outboxClient.js"
import type { Out, Styles } from "./style.js"

/**
 * `bus dead-letters list` and `bus dead-letters replay <id…>`: what the relay and the
 * outbox's consumer groups gave up on, and handing it back once the cause is fixed (the
 * same as `replayDeadLetters` of `@bus/postgres-notify`).
 *
 * @module
 */

export interface DeadLettersOptions {
  readonly url: string
  readonly schema: string
  readonly action: "list" | "replay"
  readonly ids: ReadonlyArray<string>
  readonly limit: number
  readonly json: boolean
  readonly out: Out
  readonly styles: Styles
}

export const deadLetters = async (o: DeadLettersOptions): Promise<void> => {
  try {
    if (o.action === "replay") {
      if (o.ids.length === 0) throw new CliError("usage: bus dead-letters replay <event id>…", 2)
      const bad = invalidEventIds(o.ids)
      if (bad.length > 0) throw new CliError(`not event ids: ${bad.join(", ")}`, 2)
      const result = await replayDeadLetters({ connectionString: o.url, schema: o.schema }, o.ids)
      if (o.json) o.out.write(`${JSON.stringify(result)}\n`)
      else {
        for (const r of result.replayed)
          o.out.write(`replayed ${r.id} (${r.tenant}/${r.channel}, given up by ${r.source})\n`)
        for (const id of result.missing) o.out.write(o.styles.yellow(`not a dead letter: ${id}\n`))
      }
      if (result.missing.length > 0)
        throw new CliError(`${result.missing.length} id(s) were not dead letters`, 1)
      return
    }
    await withOutboxClient(o.url, o.schema, async (client) => {
      const { rows } = await client.query<{
        id: string
        tenant: string
        channel: string
        type: string
        source: string
        attempts: number
        at: Date
        reason: string
      }>(
        `SELECT event_id::text AS id, tenant, channel, type, source, attempts, at, reason
         FROM "${o.schema}".dead_letters ORDER BY at DESC, seq DESC LIMIT $1`,
        [o.limit],
      )
      if (o.json) {
        o.out.write(`${JSON.stringify(rows.map((r) => ({ ...r, at: r.at.toISOString() })))}\n`)
        return
      }
      if (rows.length === 0) {
        o.out.write("no dead letters\n")
        return
      }
      for (const r of rows) {
        const reason = r.reason.split("\n")[0]!.slice(0, 120)
        o.out.write(
          `${o.styles.dim(r.at.toISOString())} ${r.id} ${r.tenant}/${r.channel} ${r.type} · ${r.source} gave up after ${r.attempts} · ${reason}\n`,
        )
      }
    })
  } catch (error) {
    if (error instanceof CliError) throw error
    throw postgresError(error, o.url, o.schema)
  }
}
