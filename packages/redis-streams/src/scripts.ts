import { createHash } from "node:crypto"

/**
 * The Lua scripts of the transport. Each runs atomically on the server, so a check and
 * the write it guards (is the event already in the stream? is this entry still ours?)
 * can never be split by another client. Every script touches the keys of one tenant
 * channel only, which share a Redis Cluster hash tag.
 *
 * Scripts run with `EVALSHA` and fall back to `EVAL` when the server's script cache is
 * empty (after a restart), so nothing needs loading up front.
 *
 * @module
 */

/** A Lua script with its SHA1, for `EVALSHA`. */
export interface LuaScript {
  readonly name: string
  readonly lua: string
  readonly sha: string
}

const script = (name: string, lua: string): LuaScript => ({
  name,
  lua,
  sha: createHash("sha1").update(lua).digest("hex"),
})

/**
 * Idempotent append, keyed by event id. KEYS: stream, dedupe key. ARGV: dedupe TTL in
 * ms, MAXLEN (`0` for none), event id, encoded envelope, then optionally the event's
 * outbox position and frontier (fields `pos` and `front`, for cursors across a transport
 * flip). Returns `{added, entryId}`: `added` is 0 when the event was already appended
 * (the entry id is then the first one).
 */
export const sendScript = script(
  "send",
  `
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local args = {KEYS[1]}
if ARGV[2] ~= '0' then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, ARGV[2])
end
table.insert(args, '*')
table.insert(args, 'id')
table.insert(args, ARGV[3])
table.insert(args, 'envelope')
table.insert(args, ARGV[4])
if ARGV[5] and ARGV[5] ~= '' then
  table.insert(args, 'pos')
  table.insert(args, ARGV[5])
end
if ARGV[6] and ARGV[6] ~= '' then
  table.insert(args, 'front')
  table.insert(args, ARGV[6])
end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
`,
)

/**
 * {@link sendScript} for a run of events of one stream in one call: the relay's batches pay
 * one script call, not one per event. KEYS: stream, then one dedupe key per event. ARGV:
 * dedupe TTL in ms, MAXLEN (`0` for none), then per event its id, encoded envelope, outbox
 * position and frontier (`''` for none). Events are appended in the order given, each
 * exactly as `sendScript` would (skipped when its dedupe key exists). Returns `{n}` when it
 * went through all `n` events, or `{k, error}` when event `k + 1` failed (its dedupe check
 * or its XADD, e.g. WRONGTYPE): the
 * `k` before it are appended and marked, so the caller knows exactly which event failed
 * and sending the rest again appends each event once.
 */
export const sendBatchScript = script(
  "sendBatch",
  `
local n = #KEYS - 1
for i = 1, n do
  local dedupe = KEYS[i + 1]
  local seen = redis.pcall('GET', dedupe)
  if type(seen) == 'table' and seen.err then return {i - 1, seen.err} end
  if not seen then
    local a = 2 + (i - 1) * 4
    local args = {KEYS[1]}
    if ARGV[2] ~= '0' then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = ARGV[2]
    end
    args[#args + 1] = '*'
    args[#args + 1] = 'id'
    args[#args + 1] = ARGV[a + 1]
    args[#args + 1] = 'envelope'
    args[#args + 1] = ARGV[a + 2]
    if ARGV[a + 3] ~= '' then
      args[#args + 1] = 'pos'
      args[#args + 1] = ARGV[a + 3]
    end
    if ARGV[a + 4] ~= '' then
      args[#args + 1] = 'front'
      args[#args + 1] = ARGV[a + 4]
    end
    local id = redis.pcall('XADD', unpack(args))
    if type(id) == 'table' and id.err then return {i - 1, id.err} end
    redis.call('SET', dedupe, id, 'PX', ARGV[1])
  end
end
return {n}
`,
)

/**
 * Where a stream stands: `{lastId, firstId, trimmed, maxDeletedId}` — the last generated
 * id, the first entry still in the stream, whether entries were ever removed (trimming
 * or XDEL: more entries added than are left) and the highest id removed by XDEL. A
 * missing stream is `{"0-0", "0-0", 0, "0-0"}`. KEYS: stream.
 */
export const positionScript = script(
  "position",
  `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', '0-0', 0, '0-0'} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first, deleted, added, length = '0-0', '0-0', '0-0', 0, 0
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'recorded-first-entry-id' then first = info[i + 1]
  elseif k == 'max-deleted-entry-id' then deleted = info[i + 1]
  elseif k == 'entries-added' then added = info[i + 1]
  elseif k == 'length' then length = info[i + 1] end
end
local trimmed = 0
if added > length then trimmed = 1 end
return {last, first, trimmed, deleted}
`,
)

/**
 * Claims entries that are pending for this consumer again (a retry after its delay, or
 * the consumer's own pending entries after a restart of its read loop): each is claimed
 * only if this consumer still owns it, which counts one more delivery. KEYS: stream.
 * ARGV: group, consumer, entry ids…. Returns `{{id, fields, deliveryCount}, …}`.
 */
export const reclaimScript = script(
  "reclaim",
  `
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
    local e = claimed[1]
    if type(e) == 'table' and type(e[2]) == 'table' then
      local q = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      out[#out + 1] = {e[1], e[2], q[1] and q[1][4] or 1}
    end
  end
end
return out
`,
)

/**
 * XAUTOCLAIM with delivery counts: takes up to COUNT entries idle for at least the given
 * time from any consumer of the group. KEYS: stream. ARGV: group, consumer, min idle ms,
 * start id, count. Returns `{nextStart, {{id, fields, deliveryCount}, …}}`.
 */
export const autoclaimScript = script(
  "autoclaim",
  `
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local q = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    out[#out + 1] = {e[1], e[2], q[1] and q[1][4] or 1}
  end
end
return {r[1], out}
`,
)

/**
 * Sets the idle time of the entries this consumer still owns, without counting a
 * delivery: idle 0 is the heartbeat that keeps entries a live consumer is working on
 * from being claimed by others; a huge idle hands entries back on close, so another
 * member claims them at its next XAUTOCLAIM. KEYS: stream. ARGV: group, consumer, idle
 * ms, entry ids…. Returns the ids still owned.
 */
export const touchScript = script(
  "touch",
  `
local kept = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'JUSTID')
    kept[#kept + 1] = id
  end
end
return kept
`,
)

/**
 * Moves a pending entry to the dead-letter stream and acknowledges it, atomically; does
 * nothing (returns 0) when the entry is no longer pending in the group, so a repeated
 * call parks it once. KEYS: stream, dead-letter stream. ARGV: group, entry id, reason,
 * attempts, ISO time, consumer.
 */
export const deadLetterScript = script(
  "dead-letter",
  `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local args = {'XADD', KEYS[2], '*', 'entry', ARGV[2], 'group', ARGV[1], 'reason', ARGV[3],
  'attempts', ARGV[4], 'at', ARGV[5], 'consumer', ARGV[6]}
if e[1] then
  local f = e[1][2]
  -- An event entry: id and envelope once each, and the relay's pos / front (flip meta).
  local id, envelope, other
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'id' and not id then id = f[i + 1]
    elseif k == 'envelope' and not envelope then envelope = f[i + 1]
    elseif k ~= 'pos' and k ~= 'front' then other = true end
  end
  if id and envelope and not other then
    args[#args + 1] = 'id'
    args[#args + 1] = id
    args[#args + 1] = 'envelope'
    args[#args + 1] = envelope
  else
    args[#args + 1] = 'raw'
    args[#args + 1] = cjson.encode(f)
  end
end
redis.call(unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
`,
)

/**
 * Deletes consumers of the group that have no pending entry and were idle for at least
 * the given time; a consumer with pending entries is never deleted (its entries would
 * be lost to the group). KEYS: stream. ARGV: group, min idle ms, consumer to keep.
 * Returns the deleted names.
 */
export const cleanupScript = script(
  "cleanup",
  `
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name ~= ARGV[3] and pending == 0 and idle >= tonumber(ARGV[2]) then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, name)
    if not p[1] then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      removed[#removed + 1] = name
    end
  end
end
return removed
`,
)

/** Deletes this consumer if it has no pending entry. KEYS: stream. ARGV: group, consumer. */
export const retireScript = script(
  "retire",
  `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if p[1] then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
`,
)

/**
 * The stream's identity, created when missing. KEYS: identity key. ARGV: a fresh identity,
 * the identity the caller knows (or ''), and '1' to replace the known one (the stream key
 * vanished while its identity stayed: a DEL). Compare-and-set, so readers in several
 * processes that notice the same loss agree on one new identity. Returns the identity.
 */
export const identityScript = script(
  "identity",
  `
local v = redis.call('GET', KEYS[1])
if (not v) or (ARGV[3] == '1' and v == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return v
`,
)

/**
 * How far a consumer group is known to be done, for a resend after data loss:
 * `{identity, kind, frontier}`. `kind` is `front` when the entry just before the group's
 * oldest pending entry (or, with nothing pending, its last delivered entry) carries the
 * outbox frontier `frontier`: every event the group may not have handled is after it;
 * `start` when the group has read nothing that is still in the stream, `unknown` when that
 * entry carries no frontier, `none` when the stream or the group does not exist. KEYS:
 * stream, identity key. ARGV: group.
 */
export const groupFloorScript = script(
  "group-floor",
  `
local identity = redis.call('GET', KEYS[2]) or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {identity, 'none'} end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, ld
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
  end
  if name == ARGV[1] then last = ld end
end
if not last then return {identity, 'none'} end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local entries
if summary[1] > 0 then
  entries = redis.call('XREVRANGE', KEYS[1], '(' .. summary[2], '-', 'COUNT', 1)
elseif last == '0-0' then
  return {identity, 'start'}
else
  entries = redis.call('XREVRANGE', KEYS[1], last, '-', 'COUNT', 1)
end
local e = entries[1]
if not e then return {identity, 'start'} end
local f = e[2]
for i = 1, #f, 2 do
  if f[i] == 'front' then return {identity, 'front', f[i + 1]} end
end
return {identity, 'unknown'}
`,
)
