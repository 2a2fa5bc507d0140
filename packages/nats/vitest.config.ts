import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // Each file starts its own nats-server(s); the machine is shared, so one file at a time.
    maxWorkers: 1,
    globalSetup: ["@bus/test-infra/global-setup"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
})
