/**
 * @bus/nats/adapter — the NATS JetStream transport as an Effect layer, its cursor codec
 * and subject names: for tools, tests and other adapters. Applications use `nats(…)` from
 * `@bus/nats`.
 *
 * @packageDocumentation
 */

export { decodeCursor, encodeCursor } from "./cursor.js"
export type { DeadLetterRecord } from "./deadLetters.js"
export {
  deadLetterStreamName,
  deadLetterSubjectOf,
  defaultStreamName,
  durableName,
  subjectOf,
} from "./names.js"
export { defaultDuplicateWindowMs } from "./options.js"
export { natsTransport } from "./transport.js"
