/**
 * @bus/core/adapter — for transport and outbox authors, tools and tests: the `Transport`
 * contract and the outbox's services (`OutboxWriter`, `OutboxReader`, `OutboxRelay`,
 * `GroupStore`, `DeadLetterStore`, `OutboxRetention`), the wiring contracts (`Outbox`, `Broker`), the relay, the
 * outbox transport, cursor and flip helpers, the envelope codec, naming, telemetry and
 * metrics, and the in-memory broker. Applications need only `@bus/core`.
 *
 * @packageDocumentation
 */

export {
  type Anchor,
  type AnchoredFilter,
  anchoredFilter,
  outboxHeads,
  sharedAnchoredFilters,
} from "./broker/anchor.js"
export { coalesce } from "./broker/coalesce.js"
export { type BrokerSubscribe, feedStream } from "./broker/feedStream.js"
export {
  addressKey,
  addressOfKey,
  feedLogStats,
  type GateItem,
  type GatePage,
  indexAfter,
  type LogPlace,
  PositionGate,
  pollLog,
} from "./broker/gate.js"
export { prepareSends } from "./broker/prepare.js"
export { brokerRetry, type RetryOptions, retryWhileRetryable } from "./broker/retry.js"
export { resolveSelection, TransportSelection } from "./bus/busLayer.js"
export type {
  AnyChannel,
  ChannelEventInput,
  ChannelRef,
  EventSchemas,
  OnInvalidEvent,
  StandardSchemaV1,
} from "./channel/Channel.js"
export {
  type BrokerName,
  defaultNotifyRateThreshold,
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
  type TransportName,
} from "./config/BusConfig.js"
export { capabilities, defaultCapabilities, type TransportCapabilities } from "./contracts/Capabilities.js"
export { addressTag, isSymbolicStart, type StartPosition } from "./contracts/Cursor.js"
export {
  type Address,
  type CompleteOutbox,
  checkComplete,
  type DeadLetter,
  DeadLetterStore,
  type GroupClaim,
  type GroupKey,
  type GroupMembership,
  GroupStore,
  type Heartbeat,
  type MemberKey,
  missingServices,
  type OutboxCore,
  type OutboxPage,
  type OutboxParts,
  OutboxReader,
  OutboxRelay,
  OutboxRetention,
  type OutboxServices,
  OutboxWriter,
  outboxContext,
  outboxLayer,
  partsOf,
  type RelayClaim,
  type RelayedEvent,
  type RelayLog,
  type RelayPage,
  type RelayState,
  replayedHeader,
  requireComplete,
} from "./contracts/OutboxStore.js"
export {
  type Delivery,
  type GroupRequest,
  type SendItem,
  type SendMeta,
  type SendOutcome,
  type SubscribeRequest,
  sendEach,
  Transport,
} from "./contracts/Transport.js"
export { type Broker, broker, type Outbox, type OutboxLayers } from "./contracts/Wiring.js"
export { type CloudEvent, fromCloudEvent, toCloudEvent } from "./envelope/CloudEvent.js"
export {
  claimFreshId,
  decodeEnvelope,
  defaultMaxPayloadBytes,
  type EncodedEnvelope,
  type Envelope,
  EnvelopeSchema,
  encodedEnvelope,
  encodedSize,
  envelopeToJson,
  type Json,
  makeEnvelope,
} from "./envelope/Envelope.js"
export { isUuidv7, uuidv7 } from "./envelope/uuidv7.js"
export { iteratorBuffer, type SubscribeOptions } from "./facade/createBus.js"
export {
  checkCursorAddress,
  cursorAddressOf,
  cursorOfAnotherAddress,
  flipCursorExpired,
  frontierSeparator,
  notCoveredBy,
  outboxCursorOf,
  splitCursor,
  withFrontier,
} from "./flip/flip.js"
export { isOutboxFrontier } from "./flip/frontier.js"
export { MemoryOutbox, MemoryTransaction } from "./memory/MemoryOutbox.js"
export { memoryBroker, memoryTransport } from "./memory/memoryTransports.js"
export * as Metrics from "./metrics/metrics.js"
export { allTenants, checkAddress, maxNameLength, type NameField, validateName } from "./names/Name.js"
export {
  ageOf,
  destinationOf,
  type MessagingOperation,
  messageAttributes,
  messagingAttributes,
  producerLinks,
  producerSpanOf,
  traceparentOf,
} from "./observability/telemetry.js"
export { dedupeById, defaultDedupeWindow } from "./outbox-transport/dedupe.js"
export {
  attachFeedCursor,
  type FeedCursor,
  FeedLog,
  type FeedPage,
  type FeedStats,
  feedCursorOf,
  feedStatsOf,
  nextFeedPage,
  type OpenFeedCursor,
  type Take,
} from "./outbox-transport/feed.js"
export {
  defaultFeedWindow,
  type OutboxTransportOptions,
  outboxFeedStats,
  outboxTransport,
} from "./outbox-transport/OutboxTransport.js"
export type { PublisherOptions, PublishInput, PublishReceipt } from "./publisher/Publisher.js"
export {
  type RelayBatchResult,
  type RelayOptions,
  type RelayServices,
  relayBatch,
  runRelay,
} from "./relay/Relay.js"
export {
  attachResendSignal,
  type BrokerLoss,
  makeResendSignal,
  markRepaired,
  type ResendSignal,
  repairedOnClaim,
  resendClaimGraceMs,
  resendSignalOf,
} from "./relay/resend.js"
export { backoffDelay, cappedBackoff } from "./schedule/backoff.js"
export type { ConsumeRequest, Handler, SubscribeInput } from "./subscriber/Subscriber.js"
