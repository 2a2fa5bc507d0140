#!/usr/bin/env node
import { parseArgs } from "node:util"
import { migrate, migrationSql, rotateEpoch } from "./schema/migrate.js"

/**
 * `bus-postgres`: operator commands for the Postgres outbox.
 *
 *   bus-postgres migrate [--url URL] [--schema bus]   apply pending migrations
 *   bus-postgres sql [--schema bus]                   print the schema as one SQL script
 *   bus-postgres rotate-epoch [--url URL] [--schema bus]  invalidate every cursor (after a restore)
 *
 * The URL defaults to $DATABASE_URL.
 *
 * @module
 */

const usage = `usage: bus-postgres <migrate|sql|rotate-epoch> [--url URL] [--schema NAME]
  migrate        apply pending outbox migrations (idempotent; safe to run concurrently)
  sql            print the full outbox schema as one SQL script
  rotate-epoch   give the outbox a new epoch: every existing cursor becomes "foreign"
  --url          connection string (default: $DATABASE_URL)
  --schema       outbox schema (default: bus)`

const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  const { positionals, values } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: {
      url: { type: "string" },
      schema: { type: "string", default: "bus" },
      help: { type: "boolean", short: "h" },
    },
  })
  const command = positionals[0]
  if (values.help || command === undefined) {
    console.log(usage)
    return command === undefined && !values.help ? 2 : 0
  }
  const schema = values.schema
  if (command === "sql") {
    process.stdout.write(migrationSql(schema))
    return 0
  }
  const connectionString = values.url ?? process.env.DATABASE_URL
  if (!connectionString) {
    console.error("bus-postgres: no connection string (pass --url or set DATABASE_URL)")
    return 2
  }
  if (command === "migrate") {
    const result = await migrate({ connectionString, schema })
    console.log(
      result.applied.length > 0
        ? `schema ${result.schema}: applied ${result.applied.join(", ")}; now at version ${result.version}`
        : `schema ${result.schema}: already at version ${result.version}`,
    )
    return 0
  }
  if (command === "rotate-epoch") {
    const epoch = await rotateEpoch({ connectionString, schema })
    console.log(`schema ${schema}: new epoch ${epoch}; every earlier cursor is now refused as foreign`)
    return 0
  }
  console.error(`bus-postgres: unknown command ${JSON.stringify(command)}\n${usage}`)
  return 2
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    console.error(`bus-postgres: ${error instanceof Error ? error.message : String(error)}`)
    process.exitCode = 1
  },
)
