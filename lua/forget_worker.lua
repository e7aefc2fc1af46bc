--[[
  forget_worker: drop a worker from the registry once its jobs were returned, unless it has
  heartbeated since the reaper judged it dead (then it stays, and keeps its registration).

  KEYS[1] registry       zset  worker id -> last heartbeat (ms)
  KEYS[2] meta           hash  worker id -> JSON
  KEYS[3] info           hash  the worker's live details

  ARGV[1] worker_id
  ARGV[2] cutoff_ms      forget only if the last heartbeat is at or before this

  Returns 1 if forgotten, 0 if the worker came back (or was already gone: -1)
]]
local rcall = redis.call
local registry_key, meta_key, info_key = KEYS[1], KEYS[2], KEYS[3]

local seen = rcall('ZSCORE', registry_key, ARGV[1])
if not seen then
  rcall('HDEL', meta_key, ARGV[1])
  return -1
end
if tonumber(seen) > tonumber(ARGV[2]) then return 0 end
rcall('ZREM', registry_key, ARGV[1])
rcall('HDEL', meta_key, ARGV[1])
rcall('DEL', info_key)
return 1
