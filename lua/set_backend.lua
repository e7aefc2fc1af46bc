--[[
  set_backend: choose a queue's backend ('lists' or 'streams'). Chosen before first use: a
  change is refused while any lane, stream or delayed set of the queue holds a job, because
  producers and workers would then look for those jobs in the other structure. Setting the
  backend already in force is a no-op.

  KEYS[1] config         hash    queue config (field backend, default lists)
  KEYS[2] lane_stable    list
  KEYS[3] lane_canary    list
  KEYS[4] stream_stable  stream
  KEYS[5] stream_canary  stream
  KEYS[6] delayed_stable zset
  KEYS[7] delayed_canary zset

  ARGV[1] now_ms         client clock, stored as updated_at
  ARGV[2] backend        'lists' | 'streams'

  Returns {changed (1 | 0), rev}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a bad argument, or the queue holds jobs (the reply says how many, and where)
]]
local rcall = redis.call
local config_key = KEYS[1]

-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'list'}, {3, 'list'}, {4, 'stream'}, {5, 'stream'},
                          {6, 'zset'}, {7, 'zset'}})
if bad then return guard_fail(-13, bad) end
if int_arg(ARGV[1], 0) == nil then return guard_fail(-4, 'ARGV[1] now_ms must be an integer') end
local want = ARGV[2]
if want ~= 'lists' and want ~= 'streams' then
  return guard_fail(-4, 'ARGV[2] backend must be lists or streams')
end
local current = rcall('HGET', config_key, 'backend') or 'lists'
if current == want then return {0, tonumber(rcall('HGET', config_key, 'rev') or '0') or 0} end
local held = rcall('LLEN', KEYS[2]) + rcall('LLEN', KEYS[3])
local streamed = rcall('XLEN', KEYS[4]) + rcall('XLEN', KEYS[5])
local delayed = rcall('ZCARD', KEYS[6]) + rcall('ZCARD', KEYS[7])
if held + streamed + delayed > 0 then
  return guard_fail(-4, 'the queue holds jobs (' .. held .. ' in lists, ' .. streamed ..
    ' in streams, ' .. delayed .. ' delayed retries) on backend ' .. current ..
    '; a backend is chosen before first use: drain the queue first')
end
rcall('HSET', config_key, 'backend', want, 'updated_at', ARGV[1])
return {1, rcall('HINCRBY', config_key, 'rev', 1)}
