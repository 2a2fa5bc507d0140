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
export { backoffDelay, cappedBackoff } from "./bus/backoff.js"
export { resolveSelection, TransportSelection } from "./bus/busLayer.js"
export type { PublisherOptions, PublishInput, PublishReceipt } from "./bus/publisher.js"
export {
  type RelayBatchResult,
  type RelayOptions,
  type RelayServices,
  relayBatch,
  runRelay,
} from "./bus/relay.js"
export {
  attachResendSignal,
  type BrokerLoss,
  makeResendSignal,
  markRepaired,
  type ResendSignal,
  repairedOnClaim,
  resendClaimGraceMs,
  resendSignalOf,
} from "./bus/resend.js"
export type { ConsumeRequest, Handler, SubscribeInput } from "./bus/subscriber.js"
export { capabilities, defaultCapabilities, type TransportCapabilities } from "./contracts/capabilities.js"
export { addressTag, isSymbolicStart, type StartPosition } from "./contracts/cursor.js"
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
} from "./contracts/outboxStore.js"
export {
  type Delivery,
  type GroupRequest,
  type SendItem,
  type SendMeta,
  type SendOutcome,
  type SubscribeRequest,
  sendEach,
  Transport,
} from "./contracts/transport.js"
export { type Broker, broker, type Outbox, type OutboxLayers } from "./contracts/wiring.js"
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
export { MemoryOutbox, MemoryTransaction } from "./memory/store.js"
export { memoryBroker, memoryTransport } from "./memory/transport.js"
export type {
  AnyChannel,
  ChannelEventInput,
  ChannelRef,
  EventSchemas,
  OnInvalidEvent,
  StandardSchemaV1,
} from "./model/channel.js"
export { type CloudEvent, fromCloudEvent, toCloudEvent } from "./model/cloudEvent.js"
export {
  type BrokerName,
  defaultNotifyRateThreshold,
  type SelectionConfig,
  selectionFromEnv,
  selectTransport,
  type TransportChoice,
  type TransportName,
} from "./model/config.js"
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
} from "./model/envelope.js"
export { allTenants, checkAddress, maxNameLength, type NameField, validateName } from "./model/name.js"
export { isUuidv7, uuidv7 } from "./model/uuidv7.js"
export * as Metrics from "./observability/metrics.js"
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
export { dedupeById, defaultDedupeWindow } from "./outboxTransport/dedupe.js"
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
} from "./outboxTransport/feed.js"
export {
  defaultFeedWindow,
  type OutboxTransportOptions,
  outboxFeedStats,
  outboxTransport,
} from "./outboxTransport/transport.js"
