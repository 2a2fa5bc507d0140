import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { type BusError, TransportFailure } from "@bus/core"
import { type Address, cappedBackoff, checkAddress, type GroupClaim, validateName } from "@bus/core/adapter"
import { Effect, type Scope } from "effect"
import { transportName } from "./errors.js"
import type { OutboxQueries } from "./outbox/queries.js"
import { runQuery, type SqlExecutor } from "./sql/executor.js"

/**
 * Consumer-group positions: one row per (tenant, channel, group) holding the
 * acknowledged cursor and the member that may move it. A member holds the row by a
 * lease it renews while its scope is open; when the process dies the lease runs out
 * and a waiting member takes over from the last committed cursor.
 *
 * @module
 */

/** Claims a group's position for the life of the scope, waiting while another member holds it. */
export const claimGroup = (
  executor: SqlExecutor,
  q: OutboxQueries,
  leaseMs: number,
  address: Address,
  group: string,
  // Releasing is a courtesy (the lease runs out anyway), so closing never waits longer for it.
  releaseTimeoutMs = 2_000,
): Effect.Effect<GroupClaim, BusError, Scope.Scope> =>
  Effect.gen(function* () {
    const { tenant, channel } = yield* checkAddress(address)
    // A dropped connection or a restarting server must not end the member: claims and
    // commits are retried (the commit's UPDATE still checks that this member holds the
    // group, so a retry after a takeover fails as it should).
    const transient = {
      schedule: cappedBackoff("50 millis", "2 seconds"),
      while: (e: BusError) => e.retryable,
    }
    const name = validateName("group", group)
    if (typeof name !== "string") return yield* name
    const owner = `${hostname()}:${process.pid}:${randomUUID()}`
    const key = [tenant, channel, name, owner]
    const retryMs = Math.min(1_000, Math.max(50, Math.floor(leaseMs / 5)))

    const release = runQuery(executor, "releaseGroup", q.releaseGroup, key).pipe(
      // Run from finalizers (uninterruptible); the statement's wait may still be cut short.
      Effect.interruptible,
      Effect.timeoutOption(releaseTimeoutMs),
      Effect.flatMap((done) =>
        done._tag === "Some"
          ? Effect.void
          : Effect.logWarning(
              `@bus/postgres-notify: consumer group ${name} of ${tenant}/${channel}: releasing the claim got no reply within ${releaseTimeoutMs} ms; abandoned (the lease runs out by itself)`,
            ),
      ),
      Effect.ignore,
    )
    // Each attempt is one statement that registers the release when it wins, so closing
    // the scope while waiting never leaves a claim behind. The statement itself stays
    // interruptible, and so do the retries between attempts: against a silent connection
    // (a half-open socket) the claim is retried for as long as the outage lasts, and
    // closing the consumer must not wait for it. A claim interrupted in flight may have
    // won on the server: it is released (bounded, as at close).
    const attempt = Effect.uninterruptibleMask((restore) =>
      restore(runQuery(executor, "claimGroup", q.claimGroup, [...key, leaseMs])).pipe(
        Effect.onInterrupt(() => release),
        Effect.tap((rows) => (rows.length === 0 ? Effect.void : Effect.addFinalizer(() => release))),
      ),
    ).pipe(Effect.retry(transient))
    let cursor: string | undefined
    while (cursor === undefined) {
      const rows = yield* attempt
      if (rows.length > 0) cursor = String(rows[0]!.cursor)
      else yield* Effect.sleep(retryMs)
    }

    let lost = false
    const lostError = () =>
      new TransportFailure({
        transport: transportName,
        retryable: false,
        message: `consumer group ${name} of ${tenant}/${channel}: this member lost its claim (lease expired and another member took over)`,
      })
    // Renew at a third of the lease, so two renewals may fail before another member can take over.
    yield* runQuery(executor, "renewGroup", q.renewGroup, [...key, leaseMs]).pipe(
      Effect.flatMap((rows) => {
        if (rows.length > 0) return Effect.void
        lost = true
        return Effect.logWarning(lostError().message)
      }),
      Effect.catch((e: BusError) => Effect.logDebug(`group lease renewal failed: ${e.message}`)),
      Effect.andThen(Effect.sleep(Math.max(10, Math.floor(leaseMs / 3)))),
      Effect.repeat({ while: () => !lost }),
      Effect.delay(Math.max(10, Math.floor(leaseMs / 3))),
      Effect.forkScoped,
    )

    const commit = (next: string, handled?: string): Effect.Effect<void, BusError> =>
      lost
        ? Effect.fail(lostError())
        : runQuery(executor, "commitGroup", q.commitGroup, [...key, next, handled ?? null]).pipe(
            Effect.retry(transient),
            Effect.flatMap((rows) => {
              if (rows.length > 0) return Effect.void
              lost = true
              return Effect.fail(lostError())
            }),
          )
    return { cursor, commit }
  })
