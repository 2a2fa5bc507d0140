import { describe, expect, it } from "vitest"
import {
  type Cursor,
  decodeCursor,
  emptySnapshot,
  encodeCursor,
  isExpired,
  isVisible,
  parsePgSnapshot,
} from "../src/adapter.js"
import { seal } from "./support/db.js"

const epoch = "0123456789abcdef0123456789abcdef"

describe("snapshot cursors", () => {
  it("round-trip steady and paging cursors, including 64-bit transaction ids", () => {
    const big = (1n << 63n) + 12345n
    const cursors: Array<Cursor> = [
      { kind: "steady", epoch, at: parsePgSnapshot("752:752:") },
      { kind: "steady", epoch, at: parsePgSnapshot("100:130:100,107,129") },
      { kind: "steady", epoch, at: { xmin: big, xmax: big + 5n, xip: [big, big + 3n] } },
      {
        kind: "paging",
        epoch,
        from: parsePgSnapshot("100:130:100,107"),
        to: parsePgSnapshot("100:140:100"),
        last: { xid: 107n, seq: 999n },
      },
      { kind: "paging", epoch, from: emptySnapshot, to: parsePgSnapshot("5:9:"), last: { xid: 4n, seq: 1n } },
    ]
    for (const c of cursors) {
      const text = encodeCursor(c)
      expect(text.startsWith("pg1:")).toBe(true)
      expect(text).not.toMatch(/[\s\n\r]/)
      expect(decodeCursor(text)).toEqual(c)
      // With the address it was read for (pg2): the same cursor, naming its address.
      const addressed = encodeCursor({ ...c, address: "0badf00d" })
      expect(addressed.startsWith("pg2:0badf00d:")).toBe(true)
      expect(decodeCursor(addressed)).toEqual({ ...c, address: "0badf00d" })
      expect(decodeCursor(addressed.replace("pg2:0badf00d:", "pg2:0badf00:"))).toMatchObject({
        reason: "malformed",
      })
    }
  })

  it("is compact: a snapshot with a few open transactions stays short", () => {
    const text = encodeCursor({
      kind: "steady",
      epoch,
      at: parsePgSnapshot("1000000:1000050:1000000,1000020,1000049"),
    })
    expect(text.length).toBeLessThan(70)
  })

  it("decides visibility as Postgres does", () => {
    const s = parsePgSnapshot("100:110:100,105")
    expect([99n, 100n, 101n, 105n, 109n, 110n, 200n].map((x) => isVisible(x, s))).toEqual([
      true,
      false,
      true,
      false,
      true,
      false,
      false,
    ])
  })

  it("expires a cursor only when retention deleted something it had not delivered", () => {
    const steady: Cursor = { kind: "steady", epoch, at: parsePgSnapshot("100:110:100") }
    expect(isExpired(steady, undefined)).toBe(false)
    expect(isExpired(steady, { xid: 99n, seq: 5n })).toBe(false)
    expect(isExpired(steady, { xid: 100n, seq: 5n })).toBe(true)
    const paging: Cursor = {
      kind: "paging",
      epoch,
      from: emptySnapshot,
      to: parsePgSnapshot("200:200:"),
      last: { xid: 150n, seq: 40n },
    }
    expect(isExpired(paging, { xid: 150n, seq: 40n })).toBe(false)
    expect(isExpired(paging, { xid: 150n, seq: 41n })).toBe(true)
    expect(isExpired(paging, { xid: 120n, seq: 400n })).toBe(false)
  })

  it("classifies bad input", () => {
    expect(decodeCursor("mem1:abc:1")).toMatchObject({ reason: "foreign" })
    expect(decodeCursor("nats1:stream:5")).toMatchObject({ reason: "foreign" })
    expect(decodeCursor("hello")).toMatchObject({ reason: "malformed" })
    expect(decodeCursor(seal(`pg1:${epoch}:zzzzzzzzzzzzzz.0`))).toMatchObject({ reason: "malformed" })
    expect(decodeCursor(`pg1:${epoch}:1.1`)).toMatchObject({ reason: "malformed" }) // no check
    expect(decodeCursor(seal(`pg1:${epoch}:1.1`))).toMatchObject({ kind: "steady" })
    expect(decodeCursor(`${seal(`pg1:${epoch}:1.1`)}0`)).toMatchObject({ reason: "malformed" })
    expect(
      decodeCursor(
        seal(`pg1:${epoch}:1.1.${Array.from({ length: 100_001 }, (_, i) => i.toString(36)).join(",")}`),
      ),
    ).toMatchObject({
      reason: "malformed",
    })
  })
})
