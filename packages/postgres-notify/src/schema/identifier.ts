import { createHash } from "node:crypto"
import { ConfigError } from "@bus/core"

/**
 * The outbox schema name is interpolated into SQL (identifiers cannot be bound as
 * parameters), so it is validated against a strict rule instead of escaped ad hoc.
 *
 * @module
 */

/** Default schema holding the outbox tables. */
export const defaultSchema = "bus"

// Lower-case only: Postgres folds unquoted identifiers to lower case, so a lower-case
// name means the same thing quoted or not, in SQL, in psql and in pg_dump output.
const schemaRule = /^[a-z_][a-z0-9_]{0,62}$/

/** Returns the schema name if it is a safe identifier, or a {@link ConfigError} saying why not. */
export const validateSchemaName = (schema: unknown): string | ConfigError => {
  if (typeof schema !== "string" || !schemaRule.test(schema)) {
    return new ConfigError({
      message: `schema must match ${schemaRule} (lower-case letters, digits, "_", at most 63 bytes); got ${JSON.stringify(schema)}`,
    })
  }
  if (schema.startsWith("pg_")) {
    return new ConfigError({
      message: `schema ${JSON.stringify(schema)}: names starting with "pg_" are reserved`,
    })
  }
  return schema
}

/** A validated schema name with its quoted form ready to splice into SQL. */
export interface SchemaName {
  readonly name: string
  /** `"name"`: safe to interpolate, since the name passed {@link validateSchemaName}. */
  readonly quoted: string
}

/** Validates and quotes a schema name; throws {@link ConfigError} when it is not safe. */
export const schemaName = (schema: unknown = defaultSchema): SchemaName => {
  const result = validateSchemaName(schema)
  if (typeof result !== "string") throw result
  return { name: result, quoted: `"${result}"` }
}

/**
 * Signed 64-bit advisory-lock key for migrations of `schema`: each schema migrates under
 * its own lock, and the key is stable across processes and versions of this package.
 */
export const migrationLockKey = (schema: string): string =>
  createHash("sha256").update(`@bus/postgres-notify:migrate:${schema}`).digest().readBigInt64BE(0).toString()
