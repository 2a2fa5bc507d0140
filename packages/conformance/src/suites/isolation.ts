import { allTenants } from "@bus/core/adapter"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  type Address,
  type Collector,
  dataField,
  event,
  rejectionOf,
  sentinelType,
  tagOf,
  uniqueAddress,
  uniqueName,
  waitFor,
  within,
  withSession,
} from "../support.js"
import type { SuiteContext } from "../target.js"

/** Names no transport may turn into a wildcard, an extra subject level, a key separator or an injection. */
export const hostileNames: ReadonlyArray<string> = [
  "",
  " ",
  "a b",
  "a.b",
  ".",
  "..",
  "*",
  ">",
  "a.*",
  "a.>",
  "*.>",
  "$SYS",
  "_INBOX",
  "a:b",
  "bus:{t}:c",
  "{a}",
  "a{b}c",
  "a\u0000b",
  "a\nb",
  "a\rb",
  "\t",
  'a"b',
  "a'b",
  "a;b",
  "a/b",
  "a\\b",
  "%",
  "%s",
  "$1",
  "a$b",
  "Robert'); DROP TABLE outbox;--",
  "ä",
  "é",
  "😀",
  "ａ",
  "İ",
  "ß",
  "\u200b",
  "a\u200bb",
  "\ud800",
  "-a",
  "_a",
  "a-",
  "a_",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "NaN",
  "0",
  "a".repeat(64),
  "a".repeat(65),
]

const addr = (tenant: string, channel: string): Address => ({ tenant, channel })

/** Pairs that collide under careless key building, case folding, prefix matching or wildcards. */
export const nearCollisionPairs: ReadonlyArray<readonly [Address, Address]> = [
  [addr("a-b", "c"), addr("a_b", "c")],
  [addr("A", "c"), addr("a", "c")],
  [addr("a", "c"), addr("ab", "c")],
  [addr("a", "c"), addr("a", "cd")],
  [addr("a-b", "c"), addr("a", "b-c")],
  [addr("a_b", "c"), addr("a", "b_c")],
  [addr("a", "b"), addr("b", "a")],
  [addr("constructor", "toString"), addr("hasOwnProperty", "c")],
  [addr("a*", "c"), addr("a", "c")],
  [addr("a", "*"), addr("a", "c")],
  // "*" is consume's every-tenant wildcard: publish and subscribe must still refuse it.
  [addr("*", "c"), addr("a", "c")],
  [addr("a.b", "c"), addr("a", "b.c")],
  [addr(">", "c"), addr("a", "c")],
  [addr("a".repeat(64), "c"), addr("a".repeat(65), "c")],
  [addr("a".repeat(63), "c"), addr("a".repeat(64), "c")],
]

const validName = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/)
const token = fc.stringMatching(/^[A-Za-z0-9]{1,8}$/)
const anyName = fc.oneof(
  { weight: 3, arbitrary: validName },
  { weight: 2, arbitrary: fc.constantFrom(...hostileNames) },
  { weight: 2, arbitrary: fc.string({ maxLength: 70 }) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme", maxLength: 10 }) },
)
const anyAddress = fc.record({ tenant: anyName, channel: anyName })
const nearPair = fc
  .tuple(token, token, token)
  .chain(([x, y, z]) =>
    fc.constantFrom<readonly [Address, Address]>(
      [addr(`${x}-${y}`, z), addr(x, `${y}-${z}`)],
      [addr(`${x}_${y}`, z), addr(x, `${y}_${z}`)],
      [addr(`${x}-${y}`, z), addr(`${x}_${y}`, z)],
      [addr(x, `${y}-${z}`), addr(x, `${y}_${z}`)],
      [addr(x, y), addr(y, x)],
      [addr(x.toUpperCase(), y), addr(x.toLowerCase(), y)],
      [addr(x, y), addr(`${x}${z}`, y)],
      [addr(x, y), addr(x, `${y}${z}`)],
      [addr(x, y), addr(`${x}-`, y)],
      [addr(x, y), addr(`${x}.${y}`, y)],
      [addr(x, y), addr(`${x}*`, y)],
      [addr(x, y), addr(`${x}>`, y)],
      [addr(x, y), addr(`${x}:${y}`, z)],
    ),
  )
const sameTenant = anyAddress.chain((a) =>
  fc.tuple(fc.constant<Address>(a), fc.record({ tenant: fc.constant(a.tenant), channel: anyName })),
)
/** The generator of (A, B) address pairs. */
export const addressPairs: fc.Arbitrary<readonly [Address, Address]> = fc.oneof(
  nearPair,
  fc.tuple(anyAddress, anyAddress),
  sameTenant,
)

const sameAddress = (a: Address, b: Address) => a.tenant === b.tenant && a.channel === b.channel

/** The first event a collector got that was not published to its own address, if any. */
const leakOf = (c: Collector): string | undefined => {
  for (const e of c.events) {
    const to = dataField(e, "to") as Address | undefined
    if (
      e.tenant !== c.address.tenant ||
      e.channel !== c.address.channel ||
      (to !== undefined && !sameAddress(to, c.address))
    ) {
      return `subscriber of ${JSON.stringify(c.address)} received an event of ${JSON.stringify(to ?? { tenant: e.tenant, channel: e.channel })}`
    }
  }
  return undefined
}

/** Invariant 5: tenant isolation whatever the names hold. */
export function isolationTests(ctx: SuiteContext): void {
  const { target } = ctx
  const timeout = ctx.deliveryTimeoutMs

  describe.concurrent("tenant isolation", () => {
    it(
      "5. hostile names (property-based): refused with InvalidName and nothing appended, or accepted and isolated",
      async () =>
        withSession(ctx, async (s) => {
          const bus = await s.bus()
          const probe = uniqueAddress()
          const probeSub = await s.live(bus, probe)
          const collectors: Array<Collector> = []
          const verdicts = new Map<string, "accepted" | "refused">()
          const stats = { runs: 0, accepted: 0, refused: 0 }

          /** Publishes one event to `x` (after a marker to the probe address, in the same batch). */
          const tryAddress = async (x: Address, sub: Collector | undefined) => {
            const marker = uniqueName("m")
            let refusal: unknown
            let ids: ReadonlyArray<string> = []
            const sentinel = await target.transaction(async (tx) => {
              try {
                ids = (
                  await bus.publish(tx, [
                    event(probe, "conformance.marker", {
                      marker,
                      to: { tenant: x.tenant, channel: x.channel },
                    }),
                    event(x, "conformance.isolation", {
                      marker,
                      to: { tenant: x.tenant, channel: x.channel },
                    }),
                  ])
                ).ids
              } catch (error) {
                refusal = error
              }
              return (await bus.publish(tx, event(probe, sentinelType, { marker }))).ids[0]!
            })
            await waitFor(() => probeSub.has(sentinel), timeout, "the probe sentinel")
            const key = JSON.stringify(x)
            if (refusal !== undefined) {
              stats.refused++
              expect(tagOf(refusal), `publish to ${key}: ${String(refusal)}`).toBe("InvalidName")
              expect(["tenant", "channel"]).toContain((refusal as { field?: unknown }).field)
              expect(
                probeSub.events.filter(
                  (e) => e.type === "conformance.marker" && dataField(e, "marker") === marker,
                ),
                `a refused batch (${key}) appended nothing`,
              ).toEqual([])
              // The same name is refused by subscribe (and consume) too.
              await waitFor(
                () => sub === undefined || sub.ended,
                timeout,
                `the subscription of ${key} to be refused`,
              )
              if (sub !== undefined) expect(tagOf(sub.error), `subscribe to ${key}`).toBe("InvalidName")
              // Tenant "*" is consume's one wildcard (a group across tenants, tests 10d/10e): a
              // consume on it starts a group instead of being refused, so only publish and
              // subscribe must refuse it here.
              if (bus.capabilities.consumerGroups && x.tenant !== allTenants) {
                const consumer = s.consume(bus, { ...x, group: "g" }, () => {})
                const refused = await within(
                  rejectionOf(() => consumer.done),
                  timeout,
                  `the consume on ${key} to be refused`,
                )
                expect(tagOf(refused), `consume on ${key}`).toBe("InvalidName")
              }
              expect(verdicts.get(key) ?? "refused", `the same name is always refused`).toBe("refused")
              verdicts.set(key, "refused")
              return
            }
            stats.accepted++
            expect(ids).toHaveLength(2)
            await waitFor(() => probeSub.has(ids[0]!), timeout, "the marker of an accepted batch")
            expect(sub, `subscribe to ${key} must succeed when publish does`).toBeDefined()
            await waitFor(() => sub!.has(ids[1]!) || sub!.ended, timeout, `the event on ${key}`)
            expect(sub!.error, `subscription of ${key}`).toBeUndefined()
            expect(verdicts.get(key) ?? "accepted").toBe("accepted")
            verdicts.set(key, "accepted")
          }

          const subscribeAny = async (x: Address): Promise<Collector | undefined> => {
            if (bus.capabilities.replay) return s.subscribe(bus, x, "beginning")
            try {
              return await s.live(bus, x)
            } catch (error) {
              if (tagOf(error) === "InvalidName") return undefined
              throw error
            }
          }

          const runPair = async ([a, b]: readonly [Address, Address]) => {
            stats.runs++
            const subA = await subscribeAny(a)
            const subB = await subscribeAny(b)
            // B publishes first, so a leak into A's stream has all of A's wait to show up.
            await tryAddress(b, subB)
            await tryAddress(a, subA)
            for (const c of [subA, subB]) if (c !== undefined && !c.ended) collectors.push(c)
            for (const c of collectors) expect(leakOf(c)).toBeUndefined()
          }

          await fc.assert(fc.asyncProperty(addressPairs, runPair), {
            // The fixed near-collision examples run first, on top of the random runs.
            numRuns: ctx.propertyRuns + nearCollisionPairs.length,
            examples: nearCollisionPairs.map((p) => [p]),
          })
          // Late leaks: every subscription stayed open for the rest of the property.
          const last = (await s.publish(bus, event(probe, sentinelType, { final: true }))).ids[0]!
          await waitFor(() => probeSub.has(last), timeout, "the final probe sentinel")
          for (const c of collectors) expect(leakOf(c)).toBeUndefined()
          console.log(
            `conformance[${target.name}] isolation: ${stats.runs} pairs, ${stats.accepted} addresses accepted, ${stats.refused} refused with InvalidName, ${collectors.length} subscriptions checked for leaks`,
          )
        }),
      120_000,
    )
  })
}
