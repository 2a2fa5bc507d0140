import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // Each test file starts its own Postgres; the machine has two cores.
    maxWorkers: 2,
    globalSetup: ["@bus/test-infra/global-setup"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
})
