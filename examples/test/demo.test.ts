import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

const run = promisify(execFile)
const root = fileURLToPath(new URL("..", import.meta.url))

describe("pnpm demo", () => {
  it("round-trips one event through Postgres LISTEN/NOTIFY and exits cleanly", async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", "src/demo.ts"], {
      cwd: root,
      timeout: 90_000,
    })
    expect(stdout).toContain("outbox schema")
    expect(stdout).toMatch(/published [0-9a-f-]{36} in a transaction and committed/)
    expect(stdout).toMatch(/received order\.paid \{"amount":"19\.90","orderId":42\}/)
  })
})
