--[[
  touch_stream: a live worker keeps the entries it holds fresh (XCLAIM to itself with JUSTID
  resets their idle time without counting a delivery), so reclaim_stream's XAUTOCLAIM takes
  only entries of workers that stopped. Only entries still pending on this worker are touched:
  one reclaimed by another worker (this one looked dead) is reported lost, never taken back.

  KEYS[1] stream         stream  the lane's stream

  ARGV[1] group          the consumer group
  ARGV[2] consumer       the worker id
  ARGV[3..] ids          entry ids the worker holds (at most 1000)

  Returns {touched, lost}: lost = flat list of the ids no longer pending on this worker
  Errors  -4 a bad argument; WRONGTYPE error reply if the key has the wrong type (no change)
]]
local rcall = redis.call
local stream_key = KEYS[1]

-- @include worker_guard
-- @include streams

if not name_ok(ARGV[1]) or not name_ok(ARGV[2]) or #ARGV < 3 or #ARGV > 1002 then return -4 end
for i = 3, #ARGV do
  if not stream_id_ok(ARGV[i]) then return -4 end
end
local bad_type = check_types({{stream_key, 'stream'}})
if bad_type then return bad_type end
local lost, mine = {}, {}
local exists = rcall('EXISTS', stream_key) == 1
for i = 3, #ARGV do
  if exists and pending_owner(stream_key, ARGV[1], ARGV[i]) == ARGV[2] then
    mine[#mine + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #mine > 0 then
  local args = {'XCLAIM', stream_key, ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  rcall(unpack(args))
end
return {#mine, lost}
