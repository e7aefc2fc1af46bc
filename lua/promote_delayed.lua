--[[
  promote_delayed: move retries that are due from the delayed sets to the tail of their lane
  (to stable when the canary lane is closed). Bounded per call; the worker loop repeats it.

  KEYS[1] delayed_stable zset
  KEYS[2] delayed_canary zset
  KEYS[3] lane_stable    list
  KEYS[4] lane_canary    list
  KEYS[5] config         hash  queue config (is the canary lane open?)

  ARGV[1] now_ms         client clock
  ARGV[2] max            jobs to move at most per delayed set (1..10000)

  Returns {moved_stable, moved_canary, more}: more = 1 if due jobs are left
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local delayed_stable, delayed_canary = KEYS[1], KEYS[2]
local lane_stable, lane_canary, config_key = KEYS[3], KEYS[4], KEYS[5]

-- @include lanes
-- @include worker_guard

local now, max = as_uint(ARGV[1]), as_uint(ARGV[2], 10000)
if not now or not max or max < 1 then return -4 end
local bad_type = check_types({{delayed_stable, 'zset'}, {delayed_canary, 'zset'},
                              {lane_stable, 'list'}, {lane_canary, 'list'},
                              {config_key, 'hash'}})
if bad_type then return bad_type end

local function move(from, to)
  local due = rcall('ZRANGEBYSCORE', from, '-inf', now, 'LIMIT', 0, max)
  for _, job in ipairs(due) do
    rcall('ZREM', from, job)
    rcall('LPUSH', to, job)
  end
  return #due
end

local canary_target = lane_stable
if canary_open(config_key) then canary_target = lane_canary end
local a = move(delayed_stable, lane_stable)
local b = move(delayed_canary, canary_target)
local more = 0
if a == max or b == max then more = 1 end
return {a, b, more}
