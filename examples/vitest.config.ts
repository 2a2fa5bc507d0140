import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // One file at a time: each starts Postgres (and the browser test Chromium) on a 2-core machine.
    fileParallelism: false,
    globalSetup: ["@bus/test-infra/global-setup"],
    testTimeout: 90_000,
    hookTimeout: 120_000,
  },
})
