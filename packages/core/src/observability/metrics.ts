import { Context, Metric } from "effect"

/**
 * The bus's metrics, recorded through Effect's Metric module so any Effect metrics
 * exporter (OpenTelemetry included, see docs/observability.md) picks them up. Most carry a
 * `transport` attribute.
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

/** Milliseconds from publish (the event's `time`) to delivery to a subscriber or handler. */
export const deliveryLag = Metric.histogram("bus_delivery_lag_ms", {
  description: "milliseconds from publish to delivery (subscriber or handler)",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 18 }),
})
/** Milliseconds from publish to the relay's send to the broker. */
export const relayLag = Metric.histogram("bus_relay_lag_ms", {
  description: "milliseconds from publish to the relay's send",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 18 }),
})
/** Connections a transport or store lost and opened again (LISTEN connection, broker connections). */
export const reconnects = Metric.counter("bus_reconnects", { description: "connections lost and re-opened" })
/** Outbox pages read to catch a subscription or group up from its cursor (not the live feed). */
export const catchUpReads = Metric.counter("bus_catchup_reads", {
  description: "outbox reads that caught a subscription up from its cursor",
})
/** Fallback polls that found changes a notification did not announce (or that arrived late). */
export const fallbackPollHits = Metric.counter("bus_fallback_poll_hits", {
  description: "fallback polls that found changed addresses",
})
/** Group deliveries acknowledged without running the handler: the group's inbox listed them as handled. */
export const inboxSkipped = Metric.counter("bus_inbox_skipped", {
  description: "group deliveries skipped because the group had handled them (after a flip or a lost ack)",
})
/**
 * Addresses one member of a consumer group across tenants (`consume` with `tenant: "*"`) runs
 * now, by `group` and `channel`: its share of the channel's tenants, which moves as members
 * come and go.
 */
export const assignedAddresses = Metric.gauge("bus_group_assigned_addresses", {
  description: "addresses a member of a consumer group across tenants runs now",
})

/**
 * `context` with `attributes` added to the metric attributes it carries, built once: a
 * metric updated with it records the same series as `Metric.withAttributes(metric,
 * attributes)` does, without the new context `withAttributes` builds on every update. For
 * the delivery path, which updates once per page and subscriber.
 *
 * @example
 * ```ts
 * import { Metrics } from "@bus/core/adapter"
 * import { type Context, Effect } from "effect"
 *
 * const program = Effect.contextWith((context: Context.Context<never>) => {
 *   const delivery = Metrics.withMetricAttributes(context, { transport: "memory" })
 *   Metrics.eventsDelivered.updateUnsafe(3, delivery)
 *   return Effect.void
 * })
 * ```
 */
export const withMetricAttributes = <R>(
  context: Context.Context<R>,
  attributes: Readonly<Record<string, string>>,
): Context.Context<R> => {
  const current = Context.get(context, Metric.CurrentMetricAttributes)
  const base = Array.isArray(current) ? Object.fromEntries(current) : current
  return Context.add(context, Metric.CurrentMetricAttributes, { ...base, ...attributes })
}
