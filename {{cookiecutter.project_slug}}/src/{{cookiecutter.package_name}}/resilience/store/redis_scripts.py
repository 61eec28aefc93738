"""Lua scripts behind the Redis store: each operation is one atomic round trip.

Every participant script gets the same KEYS, all under one hash tag (one Cluster slot):
1 record hash, 2 items list, 3 transcript list, 4 seen-ids set, 5 lease hash.
Times come from Redis ``TIME`` so retention and tokens run on the store's clock, never a
worker's. Errors are ``error_reply`` strings whose first word the client maps to an exception:
STALELEASE (fencing refused) and CORRUPT (record unusable: quarantine it).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "APPEND", "EXTEND", "JOIN", "LEAVE", "LOAD", "QUARANTINE", "RELEASE", "SET"]

_PRELUDE = """
redis.replicate_commands()
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fence_error(fence)
  local token = redis.call('HGET', KEYS[5], 'token')
  if fence == '' then
    if token then return "STALELEASE this participant's lease is held; pass its fencing token" end
  elseif token ~= fence then
    return 'STALELEASE fencing token ' .. fence .. " is not the participant's live lease"
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
local function ensure_record(schema, session, who, now)
  local found = redis.call('HMGET', KEYS[1], 'v', 'reconnects')
  if not found[1] then
    create_record(schema, session, who, now, 0)
    return true
  end
  if found[1] ~= schema or not tonumber(found[2] or '') then return nil end
  return false
end
-- a list as two bulk strings: the blobs as one JSON array text '[b1,b2,...]' (plaintext
-- entries decode in one call) and their lengths (to split sealed blobs one by one)
local function frame(blobs)
  local lens = {}
  for i = 1, #blobs do lens[i] = #blobs[i] end
  return '[' .. table.concat(blobs, ',') .. ']', table.concat(lens, ',')
end
-- the whole record: the hash as a flat field/value array, then items and transcript framed
local function record_reply(kind)
  local ia, il = frame(redis.call('LRANGE', KEYS[2], 0, -1))
  local sa, sl = frame(redis.call('LRANGE', KEYS[3], 0, -1))
  return {kind, redis.call('HGETALL', KEYS[1]), ia, il, sa, sl}
end
local function refresh(now, active_ttl, retention)
  redis.call('HSET', KEYS[1], 'seen', now)
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  -- active records live active_ttl past their last write; a left one keeps its retention
  if (redis.call('HGET', KEYS[1], 'active') or '') ~= '' then
    expire_all(active_ttl)
  else
    expire_all(math.max(redis.call('PTTL', KEYS[1]), retention))
  end
end
"""

# ARGV: fence, schema, session_id, active_ttl_ms, who, channel, event_head
# event_head is the returned event's JSON up to its last fields: '{"type":...,"participant":"..."'
JOIN = (
    _PRELUDE
    + """
local err = fence_error(ARGV[1])
if err then return redis.error_reply(err) end
local now = now_ms()
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
return record_reply(kind)
"""
)

# ARGV: fence, schema, active_ttl_ms, retention_ms, who, n_items, then (id, blob) for n_items
# items followed by (id, blob) for each transcript segment
APPEND = (
    _PRELUDE
    + """
local err = fence_error(ARGV[1])
if err then return redis.error_reply(err) end
local now = now_ms()
if ensure_record(ARGV[2], '', ARGV[5], now) == nil then
  return redis.error_reply('CORRUPT unknown schema version or bad fields')
end
local idx, added_items, added_segments = 7, 0, 0
local last_item = 7 + 2 * tonumber(ARGV[6])
while idx < last_item do
  if redis.call('SADD', KEYS[4], 'item:' .. ARGV[idx]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[idx + 1])
    added_items = added_items + 1
  end
  idx = idx + 2
end
while idx < #ARGV do
  if redis.call('SADD', KEYS[4], 'seg:' .. ARGV[idx]) == 1 then
    redis.call('RPUSH', KEYS[3], ARGV[idx + 1])
    added_segments = added_segments + 1
  end
  idx = idx + 2
end
refresh(now, tonumber(ARGV[3]), tonumber(ARGV[4]))
return {added_items, added_segments}
"""
)

# ARGV: fence, schema, active_ttl_ms, retention_ms, who, stamp_gemini (0/1), field, value, ...
SET = (
    _PRELUDE
    + """
local err = fence_error(ARGV[1])
if err then return redis.error_reply(err) end
local now = now_ms()
if ensure_record(ARGV[2], '', ARGV[5], now) == nil then
  return redis.error_reply('CORRUPT unknown schema version or bad fields')
end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'gem_at', now) end
refresh(now, tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"""
)

# ARGV: fence, session_id, retention_ms, channel, room, participant_hash
LEAVE = (
    _PRELUDE
    + """
local err = fence_error(ARGV[1])
if err then return redis.error_reply(err) end
-- a repeated leave, or one for a session a newer join replaced, changes nothing
if redis.call('HGET', KEYS[1], 'active') ~= ARGV[2] then return {'ignored'} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'active', '', 'left', now, 'seen', now)
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
expire_all(tonumber(ARGV[3]))
local reconnects = tonumber(redis.call('HGET', KEYS[1], 'reconnects')) or 0
redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'session_ended', room = ARGV[5],
  participant = ARGV[6], reconnect_count = reconnects, at = now / 1000}))
return {'left', redis.call('LLEN', KEYS[2]), redis.call('LLEN', KEYS[3]), reconnects,
        redis.call('HGET', KEYS[1], 'joined'), now, rev}
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
# reason key. ARGV: rev ('' = whatever it is now), ttl_ms, reason
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

# KEYS: lease hash. ARGV: owner, ttl_ms, force (0/1)
ACQUIRE = """
redis.replicate_commands()
local owner = redis.call('HGET', KEYS[1], 'owner')
local token = redis.call('HGET', KEYS[1], 'token')
if owner and ARGV[3] ~= '1' then
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'ok', token}
  end
  return {'held', owner, redis.call('PTTL', KEYS[1])}
end
-- microseconds of Redis TIME: tokens keep increasing even after a lease key expired
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_token = math.max((tonumber(token) or 0) + 1, now_us)
local text = string.format('%.0f', next_token)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', text)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', text}
"""

# KEYS: lease hash. ARGV: owner, token
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
