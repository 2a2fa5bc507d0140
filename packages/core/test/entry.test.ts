import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import * as Adapter from "../src/adapter.js"
import * as User from "../src/index.js"

// Every name `@bus/core` exports, types included (they are what a user's editor lists), read
// from the entry's source so type-only exports count too.
const exportedNames = (file: string): ReadonlyArray<string> => {
  const source = readFileSync(new URL(file, import.meta.url), "utf8")
  const names: Array<string> = []
  for (const [, block] of source.matchAll(/export\s+(?:type\s+)?\{([^}]*)\}/g)) {
    for (const item of block!.split(",")) {
      const name = item
        .replace(/^\s*type\s+/, "")
        .split(" as ")
        .at(-1)!
        .trim()
      if (name !== "") names.push(name)
    }
  }
  for (const [, name] of source.matchAll(/export \* as (\w+)/g)) names.push(name!)
  return names
}

describe("entry points", () => {
  it("the user's entry stays small (at most 30 names, types included)", () => {
    const names = exportedNames("../src/index.ts")
    // Growing it is a decision: add to @bus/core/adapter unless every application needs it.
    expect(names.length, names.join(", ")).toBeLessThanOrEqual(30)
    // The count read from the source matches the module's runtime values (no `export *`).
    for (const value of Object.keys(User)) expect(names).toContain(value)
  })

  it("the adapter entry does not repeat the user's names", () => {
    const user = new Set(Object.keys(User))
    expect(Object.keys(Adapter).filter((name) => user.has(name))).toEqual([])
  })
})
