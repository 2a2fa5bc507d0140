import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

/** The repository root. */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..")

/** The published packages (directory names under packages/), in dependency order. */
export const publishedPackages = [
  "core",
  "conformance",
  "postgres-notify",
  "nats",
  "redis-streams",
  "sse",
  "cli",
] as const
