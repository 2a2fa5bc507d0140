import { type GroupMembership, type MemberKey, type NameField, validateName } from "@bus/core/adapter"
import { Effect } from "effect"
import { runQuery, type SqlExecutor } from "../sql/executor.js"

/** `validateName` as an effect: the name, or its `InvalidName`. */
const checkName = (field: NameField, value: string) =>
  Effect.suspend(() => {
    const checked = validateName(field, value)
    return typeof checked === "string" ? Effect.succeed(checked) : Effect.fail(checked)
  })

/**
 * Membership of consumer groups across tenants (`consume` with `tenant: "*"`; see the core
 * `GroupMembership`): members and their address leases in `group_members` and
 * `group_leases` (schema v6). Each call is one statement. An address lease has no time of
 * its own: it is valid while its member's row is, so a member's heartbeat renews every
 * lease it holds in one write, and a lease whose member is gone or expired may be taken.
 *
 * @module
 */

/** The statements, for the quoted schema `S`. */
export const memberQueries = (S: string) => ({
  // Renews the caller, forgets expired members (and their leases), and reads the other live
  // members and the caller's leases. The final SELECT sees the table as the statement
  // started, so the caller is left out by name (its row may be new), and an expired member
  // deleted here is left out by its seen_until.
  heartbeat: `
    WITH me AS (
      INSERT INTO ${S}.group_members (channel, group_name, member, seen_until)
      VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond')
      ON CONFLICT (channel, group_name, member) DO UPDATE SET seen_until = EXCLUDED.seen_until
    ), gone AS (
      DELETE FROM ${S}.group_members
      WHERE channel = $1 AND group_name = $2 AND member <> $3 AND seen_until < clock_timestamp()
      RETURNING member
    ), dropped AS (
      DELETE FROM ${S}.group_leases l USING gone
      WHERE l.channel = $1 AND l.group_name = $2 AND l.member = gone.member
    )
    SELECT 'member' AS kind, member AS name FROM ${S}.group_members
    WHERE channel = $1 AND group_name = $2 AND member <> $3 AND seen_until >= clock_timestamp()
    UNION ALL
    SELECT 'lease', tenant FROM ${S}.group_leases
    WHERE channel = $1 AND group_name = $2 AND member = $3`,
  // Takes each lease that is free, ours, or held by a member that is not live, only while
  // the caller is live itself. Tenants in sorted order, so two members taking overlapping
  // sets lock rows in one order (no deadlock). A concurrent taker of the same row waits on
  // ON CONFLICT and then sees the winner, who is live: it takes nothing.
  lease: `
    INSERT INTO ${S}.group_leases AS l (channel, group_name, tenant, member)
    SELECT $1, $2, t, $3 FROM unnest($4::text[]) AS t
    WHERE EXISTS (
      SELECT 1 FROM ${S}.group_members m
      WHERE m.channel = $1 AND m.group_name = $2 AND m.member = $3 AND m.seen_until >= clock_timestamp()
    )
    ORDER BY t
    ON CONFLICT (channel, group_name, tenant) DO UPDATE SET member = EXCLUDED.member, taken_at = now()
    WHERE l.member = EXCLUDED.member OR NOT EXISTS (
      SELECT 1 FROM ${S}.group_members m
      WHERE m.channel = l.channel AND m.group_name = l.group_name AND m.member = l.member
        AND m.seen_until >= clock_timestamp()
    )
    RETURNING tenant`,
  release: `
    DELETE FROM ${S}.group_leases
    WHERE channel = $1 AND group_name = $2 AND member = $3 AND tenant = ANY($4::text[])`,
  leave: `
    WITH leases AS (
      DELETE FROM ${S}.group_leases WHERE channel = $1 AND group_name = $2 AND member = $3
    )
    DELETE FROM ${S}.group_members WHERE channel = $1 AND group_name = $2 AND member = $3`,
  // The channel's distinct tenants by a loose index scan of outbox_address_xid (tenant,
  // channel, xid, seq): one index descent per distinct tenant of the outbox to find the next
  // tenant, and one to check it has a row on this channel. Cost grows with the number of
  // tenants, not of rows, and publishing pays nothing (no registry to keep up to date).
  tenants: `
    WITH RECURSIVE t(tenant) AS (
      SELECT min(tenant) FROM ${S}.outbox
      UNION ALL
      SELECT (SELECT min(o.tenant) FROM ${S}.outbox o WHERE o.tenant > t.tenant)
      FROM t WHERE t.tenant IS NOT NULL
    )
    SELECT tenant FROM t
    WHERE tenant IS NOT NULL
      AND EXISTS (SELECT 1 FROM ${S}.outbox o WHERE o.tenant = t.tenant AND o.channel = $1)`,
})

/** Membership over the store's executor. */
export const makeMembership = (executor: SqlExecutor, S: string): GroupMembership => {
  const q = memberQueries(S)
  const keyOf = (key: MemberKey) =>
    Effect.all([checkName("channel", key.channel), checkName("group", key.group)])
  return {
    tenants: (channel) =>
      checkName("channel", channel).pipe(
        Effect.flatMap((c) => runQuery(executor, "listing a channel's tenants", q.tenants, [c])),
        Effect.map((rows) => rows.map((r) => String(r.tenant))),
      ),
    heartbeat: (key, member, leaseMs) =>
      keyOf(key).pipe(
        Effect.flatMap(([channel, group]) =>
          runQuery(executor, "group membership heartbeat", q.heartbeat, [
            channel,
            group,
            member,
            Math.max(1, Math.floor(leaseMs)),
          ]),
        ),
        Effect.map((rows) => ({
          others: rows.filter((r) => r.kind === "member").map((r) => String(r.name)),
          held: rows.filter((r) => r.kind === "lease").map((r) => String(r.name)),
        })),
      ),
    lease: (key, member, tenants) =>
      tenants.length === 0
        ? Effect.succeed([])
        : keyOf(key).pipe(
            Effect.flatMap(([channel, group]) =>
              runQuery(executor, "taking address leases", q.lease, [channel, group, member, [...tenants]]),
            ),
            Effect.map((rows) => rows.map((r) => String(r.tenant))),
          ),
    release: (key, member, tenants) =>
      tenants.length === 0
        ? Effect.void
        : keyOf(key).pipe(
            Effect.flatMap(([channel, group]) =>
              runQuery(executor, "giving address leases up", q.release, [
                channel,
                group,
                member,
                [...tenants],
              ]),
            ),
            Effect.asVoid,
          ),
    leave: (key, member) =>
      keyOf(key).pipe(
        Effect.flatMap(([channel, group]) =>
          runQuery(executor, "leaving a group across tenants", q.leave, [channel, group, member]),
        ),
        Effect.asVoid,
      ),
  }
}
