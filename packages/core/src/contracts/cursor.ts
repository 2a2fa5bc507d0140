/**
 * Cursors are opaque strings that a transport assigns to each delivered event. Passing
 * one back as `from` resumes right after that event. They start with the name of the
 * store that made them (`mem1:`, `pg1:`, …) so a cursor from elsewhere is refused with
 * `CursorInvalid` instead of being misread.
 *
 * @module
 */

/** Where a subscription starts: after a cursor, at the oldest retained event, or at the head. */
export type StartPosition = string | "beginning" | "now"

/** True when `from` names one of the symbolic start positions rather than a cursor. */
export const isSymbolicStart = (from: StartPosition): from is "beginning" | "now" =>
  from === "beginning" || from === "now"

/**
 * The address a cursor belongs to, as 8 hex digits (FNV-1a over `tenant \0 channel`).
 *
 * Every transport writes it into the cursors it hands out and compares it when a cursor
 * comes back: positions of one outbox or stream are shared by all its addresses, so a
 * cursor taken from another tenant or channel (a browser that stored one Last-Event-ID
 * per tab, a tenant switch) would otherwise be read as a valid position and silently
 * skip the events between the two. A mismatch is refused with
 * `CursorInvalid { reason: "address" }` (SSE turns it into the explicit `reset`). It is a
 * guard against mix-ups, not an access control: 32 bits make an accidental collision
 * between two addresses of one application vanishingly rare, and tenant isolation is
 * enforced by the subscription's own address, never by the cursor.
 *
 * @example
 * ```ts
 * import { addressTag } from "@bus/core/adapter"
 * addressTag({ tenant: "acme", channel: "orders" }) // "3f1c…" (8 hex digits)
 * ```
 */
export const addressTag = (address: { readonly tenant: string; readonly channel: string }): string => {
  let h = 0x811c9dc5
  const text = `${address.tenant}\u0000${address.channel}`
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0).toString(16).padStart(8, "0")
}
