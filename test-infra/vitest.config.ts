import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    // Reaps servers a crashed worker left behind; other packages use the built "@bus/test-infra/global-setup".
    globalSetup: ["./src/process/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
})
