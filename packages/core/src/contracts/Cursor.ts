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
