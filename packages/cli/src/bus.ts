#!/usr/bin/env node
import { main } from "./main.js"

/**
 * The `bus` executable. See `bus --help` and docs/flip.md.
 *
 * @module
 */

const interrupted = new Promise<void>((resolve) => {
  process.once("SIGINT", () => resolve())
  process.once("SIGTERM", () => resolve())
})

main(process.argv.slice(2), { out: process.stdout, err: process.stderr, env: process.env, interrupted }).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    console.error(`bus: ${error instanceof Error ? error.message : String(error)}`)
    process.exitCode = 1
  },
)
