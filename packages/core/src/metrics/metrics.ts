import { Metric } from "effect"

/**
 * The bus's metrics, recorded through Effect's Metric module so any Effect metrics
 * exporter (OpenTelemetry included) picks them up. Each carries a `transport` attribute.
 *
 * @module
 */

/** Events appended to the outbox by `publish`. */
export const eventsPublished = Metric.counter("bus_events_published", { description: "events published" })
/** Events handed to subscribers and consumer handlers. */
export const eventsDelivered = Metric.counter("bus_events_delivered", { description: "events delivered" })
/** Events the relay forwarded to a broker. */
export const relayForwarded = Metric.counter("bus_relay_forwarded", {
  description: "events forwarded by the relay",
})
/** Failed relay sends (each retried later or parked). */
export const relayFailures = Metric.counter("bus_relay_failures", { description: "failed relay sends" })
/** Events parked in the dead-letter place, by the relay or a consumer group. */
export const deadLettered = Metric.counter("bus_dead_lettered", { description: "events dead-lettered" })
/** Handler failures that will be retried. */
export const handlerRetries = Metric.counter("bus_handler_retries", { description: "handler retries" })
