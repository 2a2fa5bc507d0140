import { defineConfig } from "tsup"

// No `clean` here: both configs build into dist/ at once, and one's clean could remove the
// other's output; the build script empties dist/ before tsup starts.

export default defineConfig([
  {
    entry: ["src/index.ts"],
    format: ["esm"],
    dts: true,
    sourcemap: true,
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
    target: "es2022",
    platform: "browser",
  },
])
