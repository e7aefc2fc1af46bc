--[[
  forget_worker: drop a worker from the registry once its jobs were returned, unless it has
  heartbeated since the reaper judged it dead (then it stays, and keeps its registration).

  KEYS[1] registry       zset  worker id -> last heartbeat (ms)
  KEYS[2] deadlines      zset  worker id -> last heartbeat + its own TTL (ms)
  KEYS[3] meta           hash  worker id -> JSON
  KEYS[4] info           hash  the worker's live details

  ARGV[1] worker_id
  ARGV[2] now_ms         forget only if the worker's deadline is at or before this
  ARGV[3] fallback_ttl   TTL (ms) of a worker that advertised none (no deadline entry)

  Returns 1 if forgotten, 0 if the worker came back (or was already gone: -1)
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local registry_key, deadlines_key, meta_key, info_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include worker_guard

local now, fallback = as_uint(ARGV[2]), as_uint(ARGV[3])
if (ARGV[1] or '') == '' or not now or not fallback then return -4 end
local bad_type = check_types({{registry_key, 'zset'}, {deadlines_key, 'zset'},
                              {meta_key, 'hash'}, {info_key, 'hash'}})
if bad_type then return bad_type end

local seen = rcall('ZSCORE', registry_key, ARGV[1])
if not seen then
  rcall('HDEL', meta_key, ARGV[1])
  rcall('ZREM', deadlines_key, ARGV[1])
  return -1
end
local deadline = rcall('ZSCORE', deadlines_key, ARGV[1])
if deadline then deadline = tonumber(deadline) else deadline = tonumber(seen) + fallback end
if deadline > now then return 0 end
rcall('ZREM', registry_key, ARGV[1])
rcall('ZREM', deadlines_key, ARGV[1])
rcall('HDEL', meta_key, ARGV[1])
rcall('DEL', info_key)
return 1
