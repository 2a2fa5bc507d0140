/**
 * @bus/nats — NATS JetStream as the broker of the @bus event bus: pass `nats({ servers })`
 * to `createBus({ transport: { broker } })`. The transport layer, cursor codec and subject
 * names are in `@bus/nats/adapter`.
 *
 * @packageDocumentation
 */

export type { NatsStreamOptions, NatsTransportOptions } from "./options.js"
export { nats } from "./wiring.js"
