import { readFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { migrate } from "@bus/postgres-notify"
import { migrationSql, rotateEpoch, validateSchemaName } from "@bus/postgres-notify/adapter"
import { brokerUrls } from "./brokers.js"
import { deadLetters } from "./deadLetters.js"
import { CliError, checkPostgresUrl, postgresError, redact } from "./errors.js"
import { collectStatus, formatStatus } from "./status.js"
import { type Out, styles, useColour } from "./style.js"
import { tail } from "./tail.js"
import { attachUsage, trigger } from "./trigger.js"

/**
 * The `bus` command line.
 *
 * @module
 */

export const usage = `usage: bus <command> [options]

commands
  migrate                       apply the outbox schema (idempotent, safe to run from many processes)
  migrate --sql                 print the whole schema as one SQL script instead (for your own migration tool)
  rotate-epoch                  give the outbox a new epoch after a restore: every earlier cursor is refused
  status                        transport in use and why, NOTIFY health and pressure, backlog,
                                relay lag, dead letters, consumer groups, recommended transport
  tail <tenant> <channel>       print a channel's events as they arrive (tail -f)
  dead-letters list             what the relay and the outbox's consumer groups gave up on (newest first)
  dead-letters replay <id…>     publish those events again, same ids, to the groups that gave up on them
  trigger attach <table> …      publish every INSERT/UPDATE/DELETE of an existing table (docs/sql.md)
  trigger detach <table> --channel <c>   remove it; trigger list: the tables that publish

options
  --url <postgres://…>          the application's database (default: $DATABASE_URL)
  --schema <name>               outbox schema (default: bus)
  --json                        machine-readable output (status: one object; tail: one event per line)
  --version                     print the version
  status:
    --watch [--interval <s>]    redraw every interval (default 2 s) until Ctrl-C
    --window <seconds>          history the notify rate is measured over (default 10)
    --threshold <n>             notifying commits/s to compare with (default: $BUS_NOTIFY_RATE_THRESHOLD or 1000)
  tail:
    --from <cursor|now|beginning>  where to start (default now)
    --transport <name>          postgres-notify | nats | redis-streams (default: what BUS_* selects)
    --count <n>                 stop after n events
  dead-letters list:
    --limit <n>                 at most n (default 50)
  trigger attach:
    --tenant-column <column>    the column holding each row's tenant
    --channel <name>            the channel events go to
    --type <prefix>             event type prefix: <prefix>.insert, .update, .delete
    --columns a,b | --key <col> payload: those columns, or a pointer {table, key} (default: the row)
    --on insert,update,delete   which writes publish (default: all three)
  brokers (tail, and broker dead letters in status):
    --redis-url <redis://…>     default: $REDIS_URL
    --nats-url <nats://…>       default: $NATS_URL

The transport is selected exactly as the bus does it: BUS_TRANSPORT, BUS_NOTIFY_RATE,
BUS_NOTIFY_RATE_THRESHOLD, BUS_BROKER. See docs/flip.md.`

/** Where the command writes, what it reads, and how it is stopped (tests pass their own). */
export interface Io {
  readonly out: Out
  readonly err: Out
  readonly env: Readonly<Record<string, string | undefined>>
  /** Resolves when the user asks to stop (Ctrl-C). */
  readonly interrupted: Promise<void>
}

const number = (name: string, raw: string | undefined, min: number): number | undefined => {
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min)
    throw new CliError(`--${name} must be a number ≥ ${min}, got ${JSON.stringify(raw)}`, 2)
  return n
}

/** Runs one command; resolves with the exit code. */
export const main = async (argv: ReadonlyArray<string>, io: Io): Promise<number> => {
  try {
    return await run(argv, io)
  } catch (error) {
    const s = styles(useColour(io.err, io.env))
    if (error instanceof CliError) {
      io.err.write(`${s.red("bus:")} ${error.message}\n`)
      if (error.code === 2) io.err.write(s.dim("run `bus --help` for usage\n"))
      return error.code
    }
    io.err.write(`${s.red("bus:")} ${error instanceof Error ? error.message : String(error)}\n`)
    return 1
  }
}

const run = async (argv: ReadonlyArray<string>, io: Io): Promise<number> => {
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse(argv)
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error), 2)
  }
  const { positionals, values } = parsed
  const command = positionals[0]
  if (values.version === true) {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      version: string
    }
    io.out.write(`bus ${pkg.version} (@bus/cli, node ${process.versions.node})\n`)
    return 0
  }
  if (values.help === true || command === undefined || command === "help") {
    io.out.write(`${usage}\n`)
    return command === undefined && values.help !== true ? 2 : 0
  }
  const schema = values.schema ?? "bus"
  const validSchema = validateSchemaName(schema)
  if (typeof validSchema !== "string") throw new CliError(validSchema.message, 2)
  const url = () => checkPostgresUrl(values.url ?? io.env.DATABASE_URL)
  const brokers = () => brokerUrls({ redisUrl: values["redis-url"], natsUrl: values["nats-url"] }, io.env)

  switch (command) {
    case "migrate": {
      if (positionals.length > 1) throw new CliError("bus migrate takes no arguments", 2)
      if (values.sql === true) {
        io.out.write(migrationSql(schema))
        return 0
      }
      const target = url()
      const result = await migrate({ connectionString: target, schema, applicationName: "bus-cli" }).catch(
        (error: unknown) => {
          throw postgresError((error as { cause?: unknown }).cause ?? error, target, schema)
        },
      )
      if (values.json === true) io.out.write(`${JSON.stringify(result)}\n`)
      else {
        io.out.write(
          result.applied.length > 0
            ? `schema ${result.schema} on ${redact(target)}: applied ${result.applied.join(", ")}; now at version ${result.version}\n`
            : `schema ${result.schema} on ${redact(target)}: already at version ${result.version}\n`,
        )
      }
      return 0
    }
    case "rotate-epoch": {
      if (positionals.length > 1) throw new CliError("bus rotate-epoch takes no arguments", 2)
      const target = url()
      const epoch = await rotateEpoch({ connectionString: target, schema, applicationName: "bus-cli" }).catch(
        (error: unknown) => {
          throw postgresError((error as { cause?: unknown }).cause ?? error, target, schema)
        },
      )
      if (values.json === true) io.out.write(`${JSON.stringify({ schema, epoch })}\n`)
      else
        io.out.write(
          `schema ${schema} on ${redact(target)}: new epoch ${epoch}; every earlier cursor is now refused\n`,
        )
      return 0
    }
    case "status": {
      if (positionals.length > 1) throw new CliError("bus status takes no arguments", 2)
      const once = async () => {
        const report = await collectStatus({
          url: url(),
          schema,
          windowSeconds: number("window", values.window, 1) ?? 10,
          threshold: number("threshold", values.threshold, 1),
          env: io.env,
          brokers: brokers(),
        })
        return values.json === true
          ? `${JSON.stringify(report, values.watch === true ? undefined : null, values.watch === true ? undefined : 2)}\n`
          : `${formatStatus(report, styles(useColour(io.out, io.env)))}\n`
      }
      if (values.watch !== true) {
        io.out.write(await once())
        return 0
      }
      // --watch: one report per interval until Ctrl-C; a terminal is cleared between them,
      // a pipe gets one report after another (--json: one line each).
      const intervalMs = (number("interval", values.interval, 0.5) ?? 2) * 1000
      let stopped = false
      void io.interrupted.then(() => {
        stopped = true
      })
      while (!stopped) {
        const text = await once()
        io.out.write((io.out.isTTY === true && values.json !== true ? "\u001b[H\u001b[2J" : "") + text)
        await Promise.race([new Promise((r) => setTimeout(r, intervalMs)), io.interrupted])
      }
      return 0
    }
    case "tail": {
      const [, tenant, channel, ...rest] = positionals
      if (tenant === undefined || channel === undefined || rest.length > 0) {
        throw new CliError("usage: bus tail <tenant> <channel> [--from cursor|now|beginning]", 2)
      }
      const transport = values.transport
      if (
        transport !== undefined &&
        !["postgres-notify", "nats", "redis-streams", "auto"].includes(transport)
      ) {
        throw new CliError(
          `--transport must be postgres-notify, nats, redis-streams or auto, not ${JSON.stringify(transport)}`,
          2,
        )
      }
      await tail({
        url: url(),
        schema,
        tenant,
        channel,
        from: values.from ?? "now",
        transport,
        json: values.json === true,
        count: number("count", values.count, 1),
        env: io.env,
        brokers: brokers(),
        out: io.out,
        err: io.err,
        styles: styles(useColour(io.out, io.env)),
        stop: io.interrupted,
      })
      return 0
    }
    case "dead-letters": {
      const [, action, ...ids] = positionals
      if (action !== "list" && action !== "replay")
        throw new CliError("usage: bus dead-letters list | bus dead-letters replay <event id>…", 2)
      if (action === "list" && ids.length > 0)
        throw new CliError("bus dead-letters list takes no arguments", 2)
      await deadLetters({
        url: url(),
        schema,
        action,
        ids,
        limit: number("limit", values.limit, 1) ?? 50,
        json: values.json === true,
        out: io.out,
        styles: styles(useColour(io.out, io.env)),
      })
      return 0
    }
    case "trigger": {
      const [, action, table, ...rest] = positionals
      if ((action !== "attach" && action !== "detach" && action !== "list") || rest.length > 0)
        throw new CliError(
          `usage: ${attachUsage} | bus trigger detach <table> --channel <c> | bus trigger list`,
          2,
        )
      if (action === "list" && table !== undefined)
        throw new CliError("bus trigger list takes no arguments", 2)
      await trigger({
        url: url(),
        schema,
        action,
        ...(table !== undefined ? { table } : {}),
        ...(values["tenant-column"] !== undefined ? { tenantColumn: values["tenant-column"] } : {}),
        ...(values.channel !== undefined ? { channel: values.channel } : {}),
        ...(values.type !== undefined ? { type: values.type } : {}),
        ...(values.columns !== undefined ? { columns: values.columns } : {}),
        ...(values.key !== undefined ? { key: values.key } : {}),
        ...(values.on !== undefined ? { on: values.on } : {}),
        json: values.json === true,
        out: io.out,
      })
      return 0
    }
    default:
      throw new CliError(`unknown command ${JSON.stringify(command)}`, 2)
  }
}

const parse = (argv: ReadonlyArray<string>) =>
  parseArgs({
    args: [...argv],
    allowPositionals: true,
    strict: true,
    options: {
      url: { type: "string" },
      schema: { type: "string" },
      json: { type: "boolean" },
      sql: { type: "boolean" },
      window: { type: "string" },
      threshold: { type: "string" },
      from: { type: "string" },
      transport: { type: "string" },
      count: { type: "string" },
      "redis-url": { type: "string" },
      "nats-url": { type: "string" },
      "tenant-column": { type: "string" },
      channel: { type: "string" },
      type: { type: "string" },
      columns: { type: "string" },
      key: { type: "string" },
      on: { type: "string" },
      watch: { type: "boolean" },
      interval: { type: "string" },
      limit: { type: "string" },
      version: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
    },
  })
