/**
 * `@bus/sse/client`: follow `@bus/sse` streams from a browser with `fetch` (so requests can
 * carry an `Authorization` header), resume ids kept per stream, `reset` and `overflow`
 * handled, reconnects with jittered backoff. No dependencies: it runs in any page, worker
 * or runtime with `fetch` and streams.
 *
 * @packageDocumentation
 */

export {
  type BusEvent,
  type BusStream,
  type ChannelEventOf,
  type EventOf,
  type FollowStreamOptions,
  followStream,
  type ResetInfo,
  type StreamHandlers,
  type StreamStatus,
} from "./followStream.js"
export { EventStreamParser, type ParsedEvent } from "./parse.js"
export { defaultStorage, memoryStorage, type ResumeStorage, streamKey } from "./storage.js"
