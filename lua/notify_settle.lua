--[[
  notify_settle: the sender is done with one outbox entry: record every webhook it gave up on
  (a `notify_failed` entry each in the dead outbox) and acknowledge the entry, in one step, so
  a crash can neither lose the failure record nor leave an acknowledged entry unrecorded.

  KEYS[1] outbox         stream  the queue's notification outbox (read by a consumer group)
  KEYS[2] outbox_dead    stream  notifications given up on (capped)

  ARGV[1] group          the sender's consumer group
  ARGV[2] entry_id       the outbox entry's id (ms-seq)
  ARGV[3] dead_maxlen    approximate cap of the dead outbox (positive integer)
  ARGV[4] n failures, then n JSON records (notification, webhook, attempts, last error)

  Returns the number of entries acknowledged (1, or 0 if it was not pending in the group)
  Errors  as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument
]]
local rcall = redis.call
local outbox_key, dead_key = KEYS[1], KEYS[2]

-- @include guard

local bad = bad_key_type({{1, 'stream'}, {2, 'stream'}})
if bad then return guard_fail(-13, bad) end
if ARGV[1] == nil or ARGV[1] == '' then return guard_fail(-4, 'ARGV[1] group is empty') end
if not string.match(ARGV[2] or '', '^%d+%-%d+$') then
  return guard_fail(-4, 'ARGV[2] entry_id must look like 1700000000000-0')
end
if int_arg(ARGV[3], 1) == nil then return guard_fail(-4, 'ARGV[3] dead_maxlen must be a positive integer') end
local n = int_arg(ARGV[4], 0)
if n == nil or #ARGV ~= 4 + n then return guard_fail(-4, 'ARGV[4] failure count does not match') end

for i = 5, 4 + n do
  rcall('XADD', dead_key, 'MAXLEN', '~', ARGV[3], '*', 'type', 'notify_failed',
        'entry', ARGV[2], 'f', ARGV[i])
end
if rcall('EXISTS', outbox_key) == 0 then return 0 end
local acked = redis.pcall('XACK', outbox_key, ARGV[1], ARGV[2])
if type(acked) ~= 'number' then return 0 end  -- no such group (the stream was recreated)
return acked
