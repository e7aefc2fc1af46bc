--[[
  heartbeat: register or refresh a worker in the registry (a sorted set by last-seen, so live
  and dead workers are found without SCAN), with its live details under a TTL. The worker's
  own TTL is advertised (deadlines = now + ttl), so the reaper judges each worker by its own
  heartbeat, never by the reaper's.

  KEYS[1] registry       zset  worker id -> last heartbeat (ms)
  KEYS[2] deadlines      zset  worker id -> last heartbeat + ttl (ms): dead once past it
  KEYS[3] meta           hash  worker id -> JSON {version, queues: {queue: lane}, ttl_ms}
  KEYS[4] info           hash  this worker's live details (expires after missed heartbeats)

  ARGV[1] worker_id
  ARGV[2] now_ms         client clock
  ARGV[3] ttl_ms         how long the worker counts as alive without a heartbeat
                         (300..900000: heartbeats of 0.1 s..300 s, 3 missed)
  ARGV[4] meta           JSON kept for the reaper
  ARGV[5..] field, value pairs of live details

  Returns 1 if the worker was already registered, 0 if this registered it (again)
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local registry_key, deadlines_key, meta_key, info_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include worker_guard

local now, ttl = as_uint(ARGV[2]), as_uint(ARGV[3], 900000)
if (ARGV[1] or '') == '' or not now or not ttl or ttl < 300 or (ARGV[4] or '') == '' or
    #ARGV % 2 ~= 0 then
  return -4
end
local bad_type = check_types({{registry_key, 'zset'}, {deadlines_key, 'zset'},
                              {meta_key, 'hash'}, {info_key, 'hash'}})
if bad_type then return bad_type end

local known = rcall('ZADD', registry_key, now, ARGV[1]) == 0
rcall('ZADD', deadlines_key, now + ttl, ARGV[1])
rcall('HSET', meta_key, ARGV[1], ARGV[4])
rcall('DEL', info_key)
if #ARGV >= 6 then
  rcall('HSET', info_key, unpack(ARGV, 5))
end
rcall('PEXPIRE', info_key, ttl)
if known then return 1 end
return 0
