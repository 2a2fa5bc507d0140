import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // The flip tests run several processes against real servers; the machine has two cores.
    maxWorkers: 1,
    globalSetup: ["@bus/test-infra/global-setup"],
    testTimeout: 180_000,
    hookTimeout: 120_000,
  },
})
