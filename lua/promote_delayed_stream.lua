--[[
  promote_delayed_stream: the Streams backend's promote_delayed. Retries that are due leave the
  delayed sets and re-enter their lane's stream as NEW entries (XADD; fail_stream already acked
  and deleted the failed attempt's entry in the same step that scheduled the retry), to the
  stable stream when the canary lane is closed. Bounded per call; the worker loop repeats it.

  KEYS[1] delayed_stable zset    envelope -> due ms
  KEYS[2] delayed_canary zset
  KEYS[3] stream_stable  stream
  KEYS[4] stream_canary  stream
  KEYS[5] config         hash    queue config (is the canary lane open?)

  ARGV[1] now_ms         client clock
  ARGV[2] max            jobs to move at most per delayed set (1..10000)
  ARGV[3] group          the lanes' consumer group (created with a missing stream)

  Returns {moved_stable, moved_canary, more}: more = 1 if due jobs are left
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local delayed_stable, delayed_canary = KEYS[1], KEYS[2]
local stream_stable, stream_canary, config_key = KEYS[3], KEYS[4], KEYS[5]

-- @include lanes
-- @include worker_guard
-- @include streams

local now, max = as_uint(ARGV[1]), as_uint(ARGV[2], 10000)
if not now or not max or max < 1 or not name_ok(ARGV[3]) then return -4 end
local bad_type = check_types({{delayed_stable, 'zset'}, {delayed_canary, 'zset'},
                              {stream_stable, 'stream'}, {stream_canary, 'stream'},
                              {config_key, 'hash'}})
if bad_type then return bad_type end

local function move(from, to)
  local due = rcall('ZRANGEBYSCORE', from, '-inf', now, 'LIMIT', 0, max)
  if #due > 0 then ensure_stream(to, ARGV[3]) end
  for _, job in ipairs(due) do
    rcall('ZREM', from, job)
    rcall('XADD', to, '*', 'e', job)
  end
  return #due
end

local canary_target = stream_stable
if canary_open(config_key) then canary_target = stream_canary end
local a = move(delayed_stable, stream_stable)
local b = move(delayed_canary, canary_target)
local more = 0
if a == max or b == max then more = 1 end
return {a, b, more}
