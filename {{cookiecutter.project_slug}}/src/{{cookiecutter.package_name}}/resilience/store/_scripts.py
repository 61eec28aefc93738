"""Lua scripts behind the Redis store: each operation is one atomic round trip.

Every participant script gets the same KEYS, all under one hash tag (one Cluster slot, see
_keys.py): 1 record hash, 2 items list, 3 transcript list, 4 seen-ids set, 5 lease hash. The
lease is among them so that a write and its fencing check are one script (fenced.py).
Times come from Redis ``TIME`` so retention and tokens run on the store's clock, never a
worker's. Errors are ``error_reply`` strings whose first word the client maps to an exception:
STALELEASE (fencing refused), CORRUPT (record unusable: quarantine it) and LOST (a
live participant's record is gone: Redis lost its data; give the record back).
``ACQUIRE`` / ``RELEASE`` are the Redis implementation of leases.py, for every lease: a
participant's (KEYS[5] above) and a room's (primary/room_lease.py).
The watch list of held rooms has scripts of its own (primary/room_registry.py).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "APPEND", "EXTEND", "JOIN", "LEAVE", "LOAD", "QUARANTINE", "RELEASE", "SET"]

_PRELUDE = """
redis.replicate_commands()
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- the fencing rules of leases.py: a write carrying the newest token goes ahead while its
-- lease lives or after it lapsed; an unfenced one only while no lease is live
local function fence_error(fence, now)
  local lease = redis.call('HMGET', KEYS[5], 'token', 'until')
  if not lease[1] then return nil end
  local live = tonumber(lease[2] or '0') > now
  if fence == '' then
    if live then return "STALELEASE this participant's lease is held; pass its fencing token" end
    return nil
  end
  if tonumber(fence) < tonumber(lease[1]) or (live and fence ~= lease[1]) then
    return 'STALELEASE fencing token ' .. fence .. " is older than the lease's ("
      .. lease[1] .. '): another worker took over'
  end
  return nil
end
local function expire_all(ttl)
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
local function create_record(schema, session, who, now, rev)
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[1], 'v', schema, 'joined', now, 'seen', now, 'reconnects', 0,
             'active', session, 'rev', rev, 'who', who)
end
-- the record a write goes to: created when absent, unless the writer knows the participant is
-- here (live == '1'): then Redis lost it, and the writer must give the whole record back first
local function ensure_record(schema, session, who, now, live)
  local found = redis.call('HMGET', KEYS[1], 'v', 'reconnects')
  if not found[1] then
    if live == '1' then
      return redis.error_reply('LOST redis no longer holds this live participant')
    end
    create_record(schema, session, who, now, 0)
    return nil
  end
  if found[1] ~= schema or not tonumber(found[2] or '') then
    return redis.error_reply('CORRUPT unknown schema version or bad fields')
  end
  return nil
end
-- a list as two bulk strings: the blobs as one JSON array text '[b1,b2,...]' (plaintext
-- entries decode in one call) and their lengths (to split sealed blobs one by one)
local function frame(blobs)
  local lens = {}
  for i = 1, #blobs do lens[i] = #blobs[i] end
  return '[' .. table.concat(blobs, ',') .. ']', table.concat(lens, ',')
end
-- the record: the hash as a flat field/value array, then items and transcript framed (the
-- newest `tail` segments when tail is a number)
local function record_reply(kind, tail)
  local ia, il = frame(redis.call('LRANGE', KEYS[2], 0, -1))
  local newest = tonumber(tail or '')
  local sa, sl = frame(redis.call('LRANGE', KEYS[3], newest and -newest or 0, -1))
  return {kind, redis.call('HGETALL', KEYS[1]), ia, il, sa, sl}
end
-- what the store's retention rule (retention.py) reads of a left record: reconnects, items
-- and segments ever stored (trimmed ones too), joined, left, rev, and its TTL now (ms)
local function away_info(now)
  local f = redis.call('HMGET', KEYS[1], 'reconnects', 'it', 'st', 'joined', 'left', 'rev')
  return {tonumber(f[1]) or 0, redis.call('LLEN', KEYS[2]) + (tonumber(f[2]) or 0),
          redis.call('LLEN', KEYS[3]) + (tonumber(f[3]) or 0), f[4] or now, f[5] or now, f[6],
          redis.call('PTTL', KEYS[1])}
end
-- active records live active_ttl past their last write; a left one keeps its retention, and
-- the store may lengthen it for the record's engagement: the reply is away_info, {} if active
local function refresh(now, active_ttl, retention)
  redis.call('HSET', KEYS[1], 'seen', now)
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  if (redis.call('HGET', KEYS[1], 'active') or '') ~= '' then
    expire_all(active_ttl)
    return {}
  end
  expire_all(math.max(redis.call('PTTL', KEYS[1]), retention))
  return away_info(now)
end
"""

# ARGV: fence, schema, session_id, active_ttl_ms, who, channel, event_head, transcript tail
# ('' = all). event_head is the returned event's JSON up to its last fields:
# '{"type":...,"participant":"..."'
JOIN = (
    _PRELUDE
    + """
local now = now_ms()
local err = fence_error(ARGV[1], now)
if err then return redis.error_reply(err) end
local ttl = tonumber(ARGV[4])
local found = redis.call('HMGET', KEYS[1], 'v', 'reconnects', 'active')
if not found[1] then
  -- a new participant: only the record hash exists, nobody is told, nothing to read back
  create_record(ARGV[2], ARGV[3], ARGV[5], now, 1)
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {'new', redis.call('HGETALL', KEYS[1]), '[]', '', '[]', ''}
end
if found[1] ~= ARGV[2] or not tonumber(found[2] or '') then
  return redis.error_reply('CORRUPT unknown schema version or bad fields')
end
local kind = 'duplicate'
if found[3] ~= ARGV[3] then
  kind = 'returning'
  local n = redis.call('HINCRBY', KEYS[1], 'reconnects', 1)
  redis.call('HDEL', KEYS[1], 'left')
  redis.call('HSET', KEYS[1], 'active', ARGV[3], 'seen', now)
  redis.call('PUBLISH', ARGV[6], ARGV[7] .. ',"reconnect_count":' .. n
    .. ',"at":' .. string.format('%.3f', now / 1000) .. '}')
else
  redis.call('HSET', KEYS[1], 'seen', now)
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
expire_all(ttl)
return record_reply(kind, ARGV[8])
"""
)

# ARGV: fence, schema, active_ttl_ms, retention_ms, who, live (0/1), n_items, max_entries,
# max_bytes, compact (the stored blob of the item to drop the items through, '' = none),
# then (id, blob) for n_items items followed by (id, blob) for each segment.
# A stale fence does not refuse the write: entries are append-only with unique ids, so a
# writer that lost the participant has its new entries merged (reply's third value 1), and
# it drops nothing. Dropped items' ids stay in the seen set: a late re-append is ignored.
# Reply: items added, segments added, merged, and refresh's away_info.
APPEND = (
    _PRELUDE
    + """
local now = now_ms()
local merged = 0
if fence_error(ARGV[1], now) then merged = 1 end
local err = ensure_record(ARGV[2], '', ARGV[5], now, ARGV[6])
if err then return err end
local max_n, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
-- push a list's new entries, drop its entries through `through` (a stored blob) if held, then
-- its oldest beyond the bounds (all counted in the record as trimmed)
local function push(list, tag, from, to, bytes_field, trimmed_field, through)
  local added = 0
  local bytes = tonumber(redis.call('HGET', KEYS[1], bytes_field) or '0')
  for idx = from, to, 2 do
    if redis.call('SADD', KEYS[4], tag .. ARGV[idx]) == 1 then
      redis.call('RPUSH', list, ARGV[idx + 1])
      bytes = bytes + #ARGV[idx + 1]
      added = added + 1
    end
  end
  local trimmed = 0
  local at = through ~= '' and redis.call('LPOS', list, through)
  if at then
    for _, blob in ipairs(redis.call('LRANGE', list, 0, at)) do bytes = bytes - #blob end
    redis.call('LTRIM', list, at + 1, -1)
    trimmed = at + 1
  end
  local n = redis.call('LLEN', list)
  while n > 1 and (n > max_n or bytes > max_bytes) do
    bytes = bytes - #redis.call('LPOP', list)
    n = n - 1
    trimmed = trimmed + 1
  end
  redis.call('HSET', KEYS[1], bytes_field, bytes)
  if trimmed > 0 then redis.call('HINCRBY', KEYS[1], trimmed_field, trimmed) end
  return added
end
local first_segment = 11 + 2 * tonumber(ARGV[7])
local through = merged == 0 and ARGV[10] or ''
local added_items = push(KEYS[2], 'item:', 11, first_segment - 1, 'ib', 'it', through)
local added_segments = push(KEYS[3], 'seg:', first_segment, #ARGV - 1, 'sb', 'st', '')
local away = refresh(now, tonumber(ARGV[3]), tonumber(ARGV[4]))
return {added_items, added_segments, merged, away}
"""
)

# ARGV: fence, schema, active_ttl_ms, retention_ms, who, live (0/1), stamp_gemini (0/1),
# field, value, ... Reply: 1 and refresh's away_info.
SET = (
    _PRELUDE
    + """
local now = now_ms()
local err = fence_error(ARGV[1], now)
if err then return redis.error_reply(err) end
err = ensure_record(ARGV[2], '', ARGV[5], now, ARGV[6])
if err then return err end
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'gem_at', now) end
return {1, refresh(now, tonumber(ARGV[3]), tonumber(ARGV[4]))}
"""
)

# ARGV: fence, session_id, retention_ms, channel, room, participant_hash. Reply: 'left' and
# away_info (for the store's retention rule), or 'ignored'.
LEAVE = (
    _PRELUDE
    + """
local now = now_ms()
local err = fence_error(ARGV[1], now)
if err then return redis.error_reply(err) end
-- a repeated leave, or one for a session a newer join replaced, changes nothing
if redis.call('HGET', KEYS[1], 'active') ~= ARGV[2] then return {'ignored'} end
redis.call('HSET', KEYS[1], 'active', '', 'left', now, 'seen', now)
redis.call('HINCRBY', KEYS[1], 'rev', 1)
expire_all(tonumber(ARGV[3]))
local reconnects = tonumber(redis.call('HGET', KEYS[1], 'reconnects')) or 0
redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'session_ended', room = ARGV[5],
  participant = ARGV[6], reconnect_count = reconnects, at = now / 1000}))
return {'left', away_info(now)}
"""
)

# Give a left record a different retention, unless it was written or re-joined meanwhile.
# KEYS 1-4; ARGV: rev, retention_ms
EXTEND = """
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then return 0 end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1
"""

# KEYS 1-4
LOAD = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return record_reply('found')
"""
)

# Move an unreadable record aside. KEYS 1-4 the record, 5-8 their quarantine names, 9 the
# note key. ARGV: rev ('' = whatever it is now), ttl_ms, note (quarantine.QuarantineNote JSON)
QUARANTINE = """
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) == 0 then return 0 end
if ARGV[1] ~= '' and redis.call('TYPE', KEYS[1]).ok == 'hash'
   and redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then
  return 0
end
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 4])
    redis.call('PEXPIRE', KEYS[i + 4], ARGV[2])
  end
end
redis.call('SET', KEYS[9], ARGV[3], 'PX', ARGV[2])
return 1
"""

# The lease rules of leases.py, for every lease (_redis_leases.py calls it).
# KEYS: lease hash (owner, token, until: Redis ms). ARGV: owner, ttl_ms, force (0/1), and
# optionally the token the caller holds: if Redis lost the lease entirely (restarted without
# its data, failed over to a replica that never had it) the holder gets it back with that token.
# The hash outlives a lapse by a day, so its token keeps fences monotonic.
# Reply: {'ok', token, until_ms} or {'held', owner, ms left}.
ACQUIRE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local lease = redis.call('HMGET', KEYS[1], 'owner', 'token', 'until')
local token = tonumber(lease[2] or '')
if not token and ARGV[4] and ARGV[3] ~= '1' then
  lease = {ARGV[1], ARGV[4]}
  token = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', ARGV[4])
end
if lease[1] == ARGV[1] and token and ARGV[3] ~= '1' then
  -- the holder renews; a holder whose lease lapsed untaken reclaims it with its own token
  redis.call('HSET', KEYS[1], 'until', now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl + 86400000)
  return {'ok', lease[2], now + ttl}
end
local left = tonumber(lease[3] or '0') - now
if token and left > 0 and ARGV[3] ~= '1' then return {'held', lease[1], left} end
-- microseconds of Redis TIME at least: tokens keep growing even if Redis lost its data
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local text = string.format('%.0f', math.max((token or 0) + 1, now_us))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', text, 'until', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl + 86400000)
return {'ok', text, now + ttl}
"""

# KEYS: lease hash. ARGV: owner, token. The token stays remembered (see ACQUIRE).
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'owner', '', 'until', 0)
  return 1
end
return 0
"""
