import { randomUUID } from "node:crypto"
import { describe, expect, it } from "vitest"
import { isUuidv7, uuidv7 } from "../src/adapter.js"

// The module keeps its last timestamp and counter; tests in this file run in order and
// the ones that pass explicit (future) timestamps come last.

const hex = (id: string) => id.replace(/-/g, "")
const timestampOf = (id: string) => Number.parseInt(hex(id).slice(0, 12), 16)
const randA = (id: string) => Number.parseInt(hex(id).slice(13, 16), 16)

describe("uuidv7", () => {
  it("is lower-case 8-4-4-4-12 hex with version 7 and the RFC 9562 variant", () => {
    for (let i = 0; i < 10_000; i++) {
      const id = uuidv7()
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
      // version: the high nibble of octet 6
      expect(id[14]).toBe("7")
      // variant: the two high bits of octet 8 are 10
      expect(Number.parseInt(id[19]!, 16) & 0b1100).toBe(0b1000)
      expect(isUuidv7(id)).toBe(true)
    }
  })

  it("carries the current Unix time in milliseconds in its first 48 bits", () => {
    const before = Date.now()
    const id = uuidv7()
    const after = Date.now()
    expect(timestampOf(id)).toBeGreaterThanOrEqual(before)
    expect(timestampOf(id)).toBeLessThanOrEqual(after + 1)
  })

  it("is strictly increasing and unique over 10,000 ids minted back to back", () => {
    const ids = Array.from({ length: 10_000 }, () => uuidv7())
    expect(new Set(ids).size).toBe(ids.length)
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!, `${ids[i - 1]} < ${ids[i]}`).toBe(true)
  })

  it("isUuidv7 refuses other versions, upper case, wrong variant and other shapes", () => {
    const id = uuidv7()
    expect(isUuidv7(randomUUID())).toBe(false) // v4
    expect(isUuidv7(id.toUpperCase())).toBe(false)
    expect(isUuidv7(`${id.slice(0, 19)}c${id.slice(20)}`)).toBe(false) // variant 11xx
    expect(isUuidv7(`${id.slice(0, 19)}7${id.slice(20)}`)).toBe(false) // variant 0xxx
    expect(isUuidv7(hex(id))).toBe(false)
    expect(isUuidv7(`${id} `)).toBe(false)
    expect(isUuidv7("")).toBe(false)
  })

  it("within one millisecond, rand_a counts up so 10,000 ids stay strictly increasing (overflow borrows the next ms)", () => {
    const ms = Date.now() + 60_000
    const ids = Array.from({ length: 10_000 }, () => uuidv7(ms))
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
    // The first id of a fresh millisecond starts the counter at 0; 4,096 ids fit in one ms.
    expect(timestampOf(ids[0]!)).toBe(ms)
    expect(randA(ids[0]!)).toBe(0)
    expect(randA(ids[1]!)).toBe(1)
    expect(timestampOf(ids[4095]!)).toBe(ms)
    expect(randA(ids[4095]!)).toBe(0xfff)
    expect(timestampOf(ids[4096]!)).toBe(ms + 1)
    expect(randA(ids[4096]!)).toBe(0)
    for (const id of ids) expect(isUuidv7(id)).toBe(true)
  })

  it("never goes backwards when the clock does", () => {
    const ms = Date.now() + 120_000
    const a = uuidv7(ms)
    const b = uuidv7(ms - 5_000)
    expect(b > a).toBe(true)
    expect(timestampOf(b)).toBe(ms)
  })

  it("encodes a timestamp above 2^32 ms exactly", () => {
    const ms = 0xffff_ffff_ffff - 10 // the largest 48-bit values
    expect(timestampOf(uuidv7(ms))).toBe(ms)
  })
})
