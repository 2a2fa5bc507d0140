import { defineConfig } from "tsup"

export default defineConfig([
  {
    entry: ["src/index.ts"],
    format: ["esm"],
    dts: true,
    sourcemap: true,
    // Only this config's own output: both configs build at once into dist/.
    clean: ["index.*"],
    target: "node22",
  },
  {
    // The browser client: self-contained files (no shared chunks, no imports of the server
    // side or of effect), so a page can load dist/client/index.js as a module as it is.
    entry: { "client/index": "src/client/index.ts", "client/react": "src/client/react.ts" },
    format: ["esm"],
    dts: true,
    sourcemap: true,
    splitting: false,
    clean: ["client", "followStream-*"],
    target: "es2022",
    platform: "browser",
  },
])
