--[[
  fence_queue: raise a queue's fence to the leader's epoch. A new leader calls it on every queue
  it acts on right after acquiring, so that writes of a deposed (paused) leader, which carry an
  older epoch, are refused on those queues even before the new leader writes to them.

  KEYS[1] fence          string  highest controller epoch that wrote to the queue

  ARGV[1] epoch          the caller's leader epoch (positive integer)

  Returns 1 if the fence now holds this epoch (it was lower or equal)
  Errors  -7 fenced: the queue already saw a newer epoch, -4 invalid argument
]]
local rcall = redis.call
local fence_key = KEYS[1]
local epoch = ARGV[1]

-- @include fence

if not string.match(epoch or '', '^%d+$') or tonumber(epoch) < 1 then return -4 end
if not fence_ok(fence_key, epoch) then return -7 end
return 1
