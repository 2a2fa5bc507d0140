import { defineConfig } from "tsup"

export default defineConfig({
  // One entry per package.json export; the global setup is loaded by vitest in its main process,
  // so it must not drag the server code (and pg) in with it.
  entry: {
    index: "src/index.ts",
    "global-setup": "src/process/globalSetup.ts",
  },
  format: ["esm"],
  dts: true,
  sourcemap: true,
  clean: true,
  target: "node22",
})
