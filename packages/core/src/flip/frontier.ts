import { createHash } from "node:crypto"

/**
 * Checks the outbox frontier a broker cursor carries after `~` (docs/flip.md), by the
 * cursor syntax of the outbox stores:
 *
 * - `mem1:<epoch: 8 hex>:<position>` (the in-memory outbox), or `mem2:<address: 8 hex>:…`
 *   with the same rest (a subscriber's cursor, which names its address);
 * - `pg1:<epoch: 32 hex>:<body>:<check>` (the Postgres outbox), or `pg2:<address: 8 hex>:…`
 *   with the same rest, where `check` is the first 8 hex digits of the SHA-256 of
 *   everything before it, so a cut, extended or edited frontier is caught as the store
 *   itself would catch it;
 * - any other outbox's cursor: `<name><version>:<text>`, printable, without spaces or `~`.
 *
 * A frontier is always an outbox cursor: a broker cursor (`nats1:`, `redis1:`) there is
 * refused too. Whether it belongs to the outbox in context (its epoch) is not checked here:
 * a frontier from another epoch is well-formed, the broker resumes from its own part and
 * leaves the frontier alone.
 *
 * Both broker transports parse their cursors with this one check. It knows the cursor
 * grammar of each outbox store shipped in this repository; a new store's cursors pass the
 * generic rule until its grammar is added here.
 *
 * @module
 */

const memCursor = /^mem(?:1|2:[0-9a-f]{8}):[0-9a-f]{8}:[0-9]{1,16}$/
const pgCursor = /^(pg(?:1|2:[0-9a-f]{8}):[0-9a-f]{32}:[0-9a-z.,:]+):([0-9a-f]{8})$/
const otherCursor = /^[a-z][a-z0-9-]*[0-9]:[!-}]+$/
const brokerCursor = /^(nats|redis)[0-9]+:/
/** Longer than any frontier a relay stores (positions and frontiers are kept short). */
const maxFrontierLength = 64 * 1024

/** True when `frontier` is a well-formed outbox cursor (see the module comment). */
export const isOutboxFrontier = (frontier: string): boolean => {
  if (frontier.length === 0 || frontier.length > maxFrontierLength) return false
  if (frontier.startsWith("mem1:") || frontier.startsWith("mem2:")) return memCursor.test(frontier)
  if (frontier.startsWith("pg1:") || frontier.startsWith("pg2:")) {
    const m = pgCursor.exec(frontier)
    return m !== null && createHash("sha256").update(m[1]!).digest("hex").slice(0, 8) === m[2]
  }
  return otherCursor.test(frontier) && !brokerCursor.test(frontier) && !frontier.includes("~")
}
