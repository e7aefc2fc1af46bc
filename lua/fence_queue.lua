--[[
  fence_queue: raise a queue's fence to the leader's epoch. A new leader calls it on every queue
  it acts on right after acquiring, so that writes of a deposed (paused) leader, which carry an
  older epoch, are refused on those queues even before the new leader writes to them.

  KEYS[1] fence          string  highest controller epoch that wrote to the queue

  ARGV[1] epoch          the caller's leader epoch (positive integer)

  Returns 1 if the fence now holds this epoch (it was lower or equal)
  Errors  -7 fenced: the queue already saw a newer epoch, -4 invalid argument; as error replies
          before any write: -13 the fence is not a string, -4 the stored fence is not an integer
]]
local rcall = redis.call
local fence_key = KEYS[1]
local epoch = ARGV[1]

-- @include fence
-- @include guard

local bad = bad_key_type({{1, 'string'}})
if bad then return guard_fail(-13, bad) end
if not stored_int_ok(rcall('GET', fence_key)) then return guard_fail(-4, 'the stored fence is not an integer') end

if not string.match(epoch or '', '^%d+$') or tonumber(epoch) < 1 then return -4 end
if not fence_ok(fence_key, epoch) then return -7 end
return 1
