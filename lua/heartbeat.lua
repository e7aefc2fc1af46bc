--[[
  heartbeat: register or refresh a worker in the registry (a sorted set by last-seen, so live
  and dead workers are found without SCAN), with its live details under a TTL.

  KEYS[1] registry       zset  worker id -> last heartbeat (ms)
  KEYS[2] meta           hash  worker id -> JSON {version, queues: {queue: lane}} (until reaped)
  KEYS[3] info           hash  this worker's live details (expires after missed heartbeats)

  ARGV[1] worker_id
  ARGV[2] now_ms         client clock
  ARGV[3] ttl_ms         how long the details live without a heartbeat
  ARGV[4] meta           JSON kept for the reaper
  ARGV[5..] field, value pairs of live details

  Returns 1 if the worker was already registered, 0 if this registered it (again)
]]
local rcall = redis.call
local registry_key, meta_key, info_key = KEYS[1], KEYS[2], KEYS[3]

local known = rcall('ZADD', registry_key, ARGV[2], ARGV[1]) == 0
rcall('HSET', meta_key, ARGV[1], ARGV[4])
rcall('DEL', info_key)
if #ARGV >= 6 then
  rcall('HSET', info_key, unpack(ARGV, 5))
end
rcall('PEXPIRE', info_key, ARGV[3])
if known then return 1 end
return 0
