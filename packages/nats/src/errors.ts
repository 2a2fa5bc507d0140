import {
  type BusError,
  ConfigError,
  isBusError,
  PayloadTooLarge,
  TransportFailure,
  TransportUnavailable,
} from "@bus/core"
import type { Envelope } from "@bus/core/adapter"
import { JetStreamApiError, JetStreamError } from "@nats-io/jetstream"
import {
  AuthorizationError,
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  InvalidArgumentError,
  NoRespondersError,
  PermissionViolationError,
  RequestError,
  TimeoutError,
  UserAuthenticationExpiredError,
} from "@nats-io/transport-node"

/**
 * Maps what the NATS client throws to the bus error family: `TransportUnavailable`
 * when the server cannot be reached or did not answer in time (retrying later helps),
 * `ConfigError` when it refused the credentials or a subject's permissions (only a
 * configuration change helps), `TransportFailure` when it answered with another error
 * (retryable or not by its kind). An event over the server's `max_payload` is caught before
 * it is sent, as `PayloadTooLarge` ({@link overMaxPayload}), as on every transport.
 *
 * @module
 */

const transport = "nats"

/** JetStream API error codes (`err_code`) that no retry can fix. */
const permanentApiCodes = new Set([
  10054, // message size exceeds maximum allowed
  10058, // stream name already in use with a different configuration
  10052, // stream subjects overlap
  10065, // stream configuration invalid / subjects overlap with an existing stream
])

const describe = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/** An event whose message (envelope and headers) is over the server's `max_payload`. */
export const overMaxPayload = (event: Envelope, bytes: number, limit: number): PayloadTooLarge =>
  new PayloadTooLarge({
    bytes,
    limit,
    message: `nats: event ${event.id} is ${bytes} bytes with headers; the server's max_payload is ${limit}`,
  })

/** Wraps any failure of a NATS call; `what` says which call, for the message. */
export const toBusError = (error: unknown, what: string): BusError => {
  if (isBusError(error)) return error
  const message = `nats: ${what}: ${describe(error)}`
  if (
    error instanceof AuthorizationError ||
    error instanceof UserAuthenticationExpiredError ||
    error instanceof PermissionViolationError
  ) {
    return new ConfigError({
      message: `${message} (check the credentials and permissions the bus connects with)`,
    })
  }
  if (
    error instanceof TimeoutError ||
    error instanceof ConnectionError ||
    error instanceof ClosedConnectionError ||
    error instanceof DrainingConnectionError ||
    error instanceof NoRespondersError ||
    (error instanceof RequestError && error.isNoResponders())
  ) {
    return new TransportUnavailable({ transport, message, cause: error })
  }
  if (error instanceof InvalidArgumentError) {
    // e.g. "max_payload size exceeded": the same message fails the same way.
    return new TransportFailure({ transport, message, retryable: false, cause: error })
  }
  if (error instanceof JetStreamApiError) {
    const retryable = error.status >= 500 || !(permanentApiCodes.has(error.code) || error.status === 400)
    return new TransportFailure({ transport, message, retryable, cause: error })
  }
  if (error instanceof Error && error.name === "JetStreamNotEnabled") {
    // No responders on a JetStream subject: the stream leader is being elected or the
    // server is starting. The same server answers once it is back.
    return new TransportUnavailable({ transport, message, cause: error })
  }
  if (error instanceof JetStreamError) {
    // Status errors of pulls (408, 409, 503) and "heartbeats missed": not reachable right now.
    return new TransportUnavailable({ transport, message, cause: error })
  }
  return new TransportFailure({ transport, message, retryable: true, cause: error })
}

/** True for failures where retrying the same call later can help. */
export const isRetryable = (error: BusError): boolean => error.retryable
