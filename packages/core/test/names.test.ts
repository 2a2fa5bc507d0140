import { Effect, Layer, Stream } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  checkAddress,
  decodeEnvelope,
  fromCloudEvent,
  makeEnvelope,
  maxNameLength,
  memoryTransport,
  validateName,
} from "../src/adapter.js"
import { InvalidName, isBusError, memoryOutbox, Subscriber } from "../src/index.js"
import { runFail } from "./support.js"

const refused = (value: unknown, field: "tenant" | "channel" | "group" = "tenant"): InvalidName => {
  const result = validateName(field, value)
  if (typeof result === "string") throw new Error(`expected ${JSON.stringify(value)} to be refused`)
  return result
}

describe("naming rule: accepted names", () => {
  it.each(["a", "Z", "0", "acme", "Acme-Corp_1", "9lives", "a-", "a_", "a--b__c", "x".repeat(maxNameLength)])(
    "accepts %j unchanged",
    (name) => {
      expect(validateName("tenant", name)).toBe(name)
      expect(validateName("channel", name)).toBe(name)
      expect(validateName("group", name)).toBe(name)
    },
  )

  it("is case-sensitive: Acme and acme are two different accepted names", () => {
    expect(validateName("tenant", "Acme")).toBe("Acme")
    expect(validateName("tenant", "acme")).toBe("acme")
  })
})

describe("naming rule: each rule's typed error", () => {
  it("empty", () => {
    const e = refused("", "channel")
    expect(e).toBeInstanceOf(InvalidName)
    expect(e._tag).toBe("InvalidName")
    expect(e.rule).toBe("empty")
    expect(e.field).toBe("channel")
    expect(e.retryable).toBe(false)
    expect(isBusError(e)).toBe(true)
  })

  it("too-long: 64 characters pass, 65 fail", () => {
    expect(maxNameLength).toBe(64)
    expect(validateName("tenant", "a".repeat(64))).toBe("a".repeat(64))
    const e = refused("a".repeat(65))
    expect(e.rule).toBe("too-long")
    expect(e.message).toContain("65")
    expect(e.message).toContain("64")
  })

  it("too-long is reported before a bad character", () => {
    expect(refused(`${"a".repeat(64)}.`).rule).toBe("too-long")
  })

  const hostile: ReadonlyArray<readonly [string, string]> = [
    [".", "NATS subject separator"],
    ["*", "NATS single-token wildcard"],
    [">", "NATS multi-token wildcard"],
    [" ", "space"],
    ["\t", "tab"],
    ["\n", "newline"],
    ["\r", "carriage return"],
    ["\u0000", "NUL"],
    [":", "Redis key separator"],
    ["{", "Redis hash tag open"],
    ["}", "Redis hash tag close"],
    ['"', "double quote"],
    ["'", "single quote"],
    ["`", "backtick"],
    ["/", "slash"],
    ["\\", "backslash"],
    ["$", "dollar"],
    ["%", "percent"],
    ["#", "hash"],
    ["+", "plus"],
    [",", "comma"],
    [";", "semicolon"],
    ["é", "latin letter with accent"],
    ["ａ", "fullwidth a"],
    ["а", "Cyrillic a (homoglyph of a)"],
    ["İ", "dotted capital I (case-folds to two characters)"],
    ["\u200b", "zero-width space"],
    ["\u00a0", "no-break space"],
    ["😀", "emoji (astral plane)"],
    ["\ud800", "lone surrogate"],
  ]

  it.each(hostile)("invalid-character: %j (%s) anywhere in the name", (char) => {
    for (const value of [`a${char}b`, `ab${char}`, `${char}ab`, char]) {
      const e = refused(value)
      // "*" alone is the consume-only tenant wildcard: refused with its own rule.
      expect(e.rule, JSON.stringify(value)).toBe(value === "*" ? "wildcard" : "invalid-character")
      expect(e.value).toBe(value)
      expect(e.message).toContain(JSON.stringify(char))
    }
  })

  it('wildcard: "*" is refused as a name, with a message that names consume as its only place', () => {
    for (const field of ["tenant", "channel", "group"] as const) {
      const e = validateName(field, "*") as InvalidName
      expect(e).toBeInstanceOf(InvalidName)
      expect(e).toMatchObject({ field, value: "*", rule: "wildcard" })
      expect(e.message).toContain("only by consume")
    }
  })

  it("invalid-start: a name must start with a letter or digit", () => {
    for (const value of ["-a", "_a", "-", "_", "--", "_0"]) {
      const e = refused(value, "group")
      expect(e.rule, value).toBe("invalid-start")
      expect(e.field).toBe("group")
    }
  })

  it("a bad character is reported before a bad start", () => {
    expect(refused("-a.b").rule).toBe("invalid-character")
  })

  it("not-a-string", () => {
    for (const value of [42, null, undefined, {}, ["a"], true, Symbol.for("a")]) {
      const result = validateName("tenant", value)
      expect(result).toBeInstanceOf(InvalidName)
      expect((result as InvalidName).rule).toBe("not-a-string")
    }
  })

  // Fails on the current code: validateName builds the error's `value` with String(value),
  // which throws for objects without a usable toString (a null-prototype object, or
  // { toString: 0 }); makeEnvelope then dies with a defect instead of failing with
  // InvalidName (design invariant 6). See the report.
  it("not-a-string is reported, never thrown, for values String() cannot convert", async () => {
    const odd: ReadonlyArray<unknown> = [
      Object.create(null),
      { toString: 0 },
      {
        toString() {
          throw new Error("no")
        },
      },
    ]
    for (const value of odd) {
      expect(() => validateName("tenant", value)).not.toThrow()
      expect((validateName("tenant", value) as InvalidName).rule).toBe("not-a-string")
      const e = await runFail(makeEnvelope({ tenant: value, channel: "c", type: "t" } as never))
      expect(e).toMatchObject({ _tag: "InvalidName", rule: "not-a-string" })
    }
  })

  it("validateName and checkAddress fail with the same typed error; the tenant is checked first", async () => {
    const e1 = validateName("channel", "a.b") as InvalidName
    expect(e1).toMatchObject({ _tag: "InvalidName", field: "channel", rule: "invalid-character" })
    const e2 = await runFail(checkAddress({ tenant: "", channel: "a.b" }))
    expect(e2).toMatchObject({ _tag: "InvalidName", field: "tenant", rule: "empty" })
    const ok = await Effect.runPromise(checkAddress({ tenant: "t", channel: "c" }))
    expect(ok).toEqual({ tenant: "t", channel: "c" })
  })
})

// What the broker transports build from names (the shape the naming rule documents).
const natsSubject = (tenant: string, channel: string) => `bus.${tenant}.${channel}`
const redisKey = (tenant: string, channel: string) => `bus:{${tenant}}:${channel}`
/** The Redis Cluster hash tag: the substring between the first `{` and the next `}`. */
const hashTag = (key: string): string | undefined => {
  const open = key.indexOf("{")
  if (open < 0) return undefined
  const close = key.indexOf("}", open + 1)
  return close > open + 1 ? key.slice(open + 1, close) : undefined
}

// Strings that often contain the dangerous characters, plus arbitrary Unicode.
const candidate = fc.oneof(
  fc.string({ unit: "binary", maxLength: 80 }),
  fc.string({ unit: fc.constantFrom(..."aZ09_-.*> :{}\"'\t\u0000é😀".split("")), maxLength: 70 }),
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,70}$/),
)

const accepted = (value: string): boolean => typeof validateName("tenant", value) === "string"

describe("naming rule: properties", () => {
  // Values whose String() throws are covered by the "not-a-string" test above (a known bug).
  const stringifiable = fc.anything().filter((value) => {
    try {
      String(value)
      return true
    } catch {
      return false
    }
  })

  it("never throws; returns the input unchanged or an InvalidName with a known rule", () => {
    fc.assert(
      fc.property(stringifiable, (value) => {
        const result = validateName("channel", value)
        if (typeof result === "string") return result === value
        return (
          result instanceof InvalidName &&
          ["empty", "too-long", "invalid-character", "invalid-start", "not-a-string", "wildcard"].includes(
            result.rule,
          )
        )
      }),
    )
  })

  it("every accepted name is a single NATS token and holds no Redis key separator", () => {
    fc.assert(
      fc.property(candidate, (name) => {
        fc.pre(accepted(name))
        // One NATS subject token: non-empty, no separator, no wildcard, no whitespace or control.
        expect(name.length).toBeGreaterThan(0)
        expect(name.split(".")).toEqual([name])
        expect(name).not.toMatch(/[*>\s\p{Cc}]/u)
        expect(natsSubject("t", name).split(".")).toEqual(["bus", "t", name])
        // No Redis key separator or hash-tag brace.
        expect(name).not.toMatch(/[:{}]/)
        // ASCII only, so its byte length equals its length and stays within the limit.
        expect(Buffer.byteLength(name, "utf8")).toBe(name.length)
        expect(name.length).toBeLessThanOrEqual(maxNameLength)
        // Nothing to escape in SQL or JSON.
        expect(name).not.toMatch(/["'`\\]/)
      }),
      { numRuns: 2_000 },
    )
  })

  it("accepted (tenant, channel) pairs map one-to-one to NATS subjects and Redis keys, and the hash tag is the tenant", () => {
    const name = fc.oneof(fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,8}$/), candidate).filter(accepted)
    fc.assert(
      fc.property(name, name, name, name, (t1, c1, t2, c2) => {
        const same = t1 === t2 && c1 === c2
        expect(natsSubject(t1, c1) === natsSubject(t2, c2)).toBe(same)
        expect(redisKey(t1, c1) === redisKey(t2, c2)).toBe(same)
        expect(redisKey(t1, c1).split(":")).toEqual(["bus", `{${t1}}`, c1])
        expect(hashTag(redisKey(t1, c1))).toBe(t1)
      }),
      { numRuns: 2_000 },
    )
  })
})

describe("naming rule: enforced at every entry point", () => {
  it("makeEnvelope (publish)", async () => {
    const e = await runFail(makeEnvelope({ tenant: "a", channel: "orders.*", type: "t" }))
    expect(e).toMatchObject({ _tag: "InvalidName", field: "channel", rule: "invalid-character" })
  })

  it("subscribe and consume (including the group name)", async () => {
    const outbox = memoryOutbox()
    const layer = Subscriber.layer.pipe(Layer.provide(memoryTransport()), Layer.provide(outbox.layer))
    const sub = await runFail(
      Subscriber.use((s) => Stream.runDrain(s.subscribe({ tenant: "acme", channel: ">" }))).pipe(
        Effect.provide(layer),
      ),
    )
    expect(sub).toMatchObject({ _tag: "InvalidName", field: "channel", rule: "invalid-character" })
    const group = await runFail(
      Subscriber.use((s) =>
        s.consume({ tenant: "acme", channel: "orders", group: "g:1" }, () => Effect.void),
      ).pipe(Effect.provide(layer)),
    )
    expect(group).toMatchObject({ _tag: "InvalidName", field: "group", rule: "invalid-character" })
  })

  it("decodeEnvelope and fromCloudEvent (data read back from a store or broker)", async () => {
    const base = {
      id: "0190b6e4-3c1a-7000-8000-000000000000",
      type: "t",
      data: null,
      headers: {},
      time: new Date(0).toISOString(),
    }
    const e1 = await runFail(decodeEnvelope({ ...base, tenant: "a b", channel: "c" }))
    expect(e1).toMatchObject({ _tag: "InvalidName", field: "tenant" })
    const e2 = await runFail(
      fromCloudEvent({ specversion: "1.0", ...base, bustenant: "acme", buschannel: "{x}" }),
    )
    expect(e2).toMatchObject({ _tag: "InvalidName", field: "channel" })
  })
})
