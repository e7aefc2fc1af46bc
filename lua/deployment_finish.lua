--[[
  deployment_finish: end a deployment once its canary lane is drained: promoting -> completed,
  rolling_back -> rolled_back; count the outcome for the metrics and keep a copy in history.

  KEYS[1] deployment     hash    the queue's current deployment
  KEYS[2] events         list    this deployment's event log, newest first: "<seq> <event JSON>"
                                 (a stream for deployments started before issue 15)
  KEYS[3] history        list    finished deployments of the queue (JSON, newest first)
  KEYS[4] counters       hash    promotions/rollbacks counters of the queue
  KEYS[5] fence          string  highest controller epoch that wrote to the queue
  KEYS[6] outbox         stream  the queue's notification outbox (notable events, docs/notifications.md)
  KEYS[7] deployment:large hash the deployment's values over 64 bytes (plan, ctl, ...): see
                                 dep_write in lua/includes/deployment.lua

  ARGV[1] epoch          leader epoch, or '' for an operator
  ARGV[2] now_ms         client clock
  ARGV[3] counter        counters field to increment (e.g. 'promotions:completed'), or ''
  ARGV[4] n field pairs, then field, value pairs
  ARGV[last] event       JSON

  Returns {final state, rev}
  Errors  -7 fenced, -12 not promoting or rolling back;
          as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument (the fence is raised only by a call that writes)
]]
local rcall = redis.call
local dep_key, events_key, history_key, counters_key, fence_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local large_key = KEYS[7]

-- @include fence
-- @include deployment
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'list', 'stream'}, {3, 'list'}, {4, 'hash'}, {5, 'string'},
                          {6, 'stream'}, {7, 'hash'}})
if bad then return guard_fail(-13, bad) end
local fence_err = fence_args_error(fence_key, ARGV[1])
if fence_err then return fence_err end
if int_arg(ARGV[2], 0) == nil then return guard_fail(-4, 'ARGV[2] now_ms must be an integer') end
if ARGV[3] == nil then return guard_fail(-4, 'ARGV[3] counter missing') end
if pairs_end(ARGV, 4, #ARGV) ~= #ARGV then return guard_fail(-4, 'field pairs from ARGV[4], then the event') end
if ARGV[3] ~= '' and not stored_int_ok(rcall('HGET', counters_key, ARGV[3])) then
  return guard_fail(-4, 'counter ' .. ARGV[3] .. ' is not an integer')
end
local raise_fence = fence_gate(fence_key, ARGV[1])
if not raise_fence then return -7 end
local state = rcall('HGET', dep_key, 'state')
local final
if state == 'promoting' then final = 'completed'
elseif state == 'rolling_back' then final = 'rolled_back'
else return -12 end

raise_fence()
local now_ms = ARGV[2]
local fields = read_pairs(ARGV, 4)
rcall('HSET', dep_key, 'state', final, 'finished_at', now_ms)
local rev = dep_write(dep_key, large_key, fields, now_ms)
add_event(events_key, ARGV[#ARGV], outbox_key, dep_key, large_key)
if ARGV[3] ~= '' then rcall('HINCRBY', counters_key, ARGV[3], 1) end
rcall('LPUSH', history_key, cjson.encode(dep_all(dep_key, large_key)))
rcall('LTRIM', history_key, 0, 99)
return {final, rev}
