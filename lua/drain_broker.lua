--[[
  drain_broker: move up to ARGV[1] waiting messages of a Celery or RQ queue's canary list to
  the head of its stable list (the end taken next), in their order: what drain_lane does for
  pycanary's own lanes, for the broker lists named by bind_broker (pycanary/integrations/).

  Celery (kombu's Redis transport) LPUSHes and takes from the right, like pycanary's lanes:
  the newest messages are LPOPed and RPUSHed (see drain_lane.lua for why this keeps the order
  across calls). Each kombu message names its queue in properties.delivery_info.routing_key,
  which kombu uses when it restores an unacknowledged message; the last
  `"routing_key": "<from_name>"` of the message is rewritten to `<to_name>`, so a drained
  message that is restored later goes back to stable, not to the closed canary queue. The rest
  of the message (body, headers) is moved byte for byte.
  RQ RPUSHes job ids and takes from the left: the newest ids are RPOPed and LPUSHed, the
  mirror image. An RQ job's hash is not touched (its `origin` stays the canary queue's name).

  These lists do not carry the queue's hash tag: the integrations need a single Redis, not a
  Cluster (docs/integrations.md).

  KEYS[1] from_list      list  the canary lane's broker list
  KEYS[2] to_list        list  the stable lane's broker list

  ARGV[1] max            messages to move at most (1..5000)
  ARGV[2] kind           'celery' | 'rq'
  ARGV[3] from_name      (celery) the canary queue's name, as in the messages' routing_key
  ARGV[4] to_name        (celery) the stable queue's name

  Returns {moved, remaining}: remaining = messages left in the from-list after this call
  Errors  -4 a bad argument (max not 1..5000, unknown kind, both keys the same list); as an
          error reply before any write: -13 a key is not a list
]]
local rcall = redis.call
local from_list, to_list = KEYS[1], KEYS[2]
local max, kind, from_name, to_name = tonumber(ARGV[1]), ARGV[2], ARGV[3] or '', ARGV[4] or ''

-- @include guard

local bad = bad_key_type({{1, 'list'}, {2, 'list'}})
if bad then return guard_fail(-13, bad) end
if max == nil or max < 1 or max > 5000 or max % 1 ~= 0 or from_list == to_list or
    (kind ~= 'celery' and kind ~= 'rq') or (kind == 'celery' and (from_name == '' or to_name == '')) then
  return -4
end

local old_rk = '"routing_key": "' .. from_name .. '"'
local new_rk = '"routing_key": "' .. to_name .. '"'

-- the last occurrence: delivery_info sits in properties, after the headers
local function rekey(msg)
  local at, stop = nil, nil
  local s, e = string.find(msg, old_rk, 1, true)
  while s do
    at, stop = s, e
    s, e = string.find(msg, old_rk, e + 1, true)
  end
  if not at then return msg end
  return string.sub(msg, 1, at - 1) .. new_rk .. string.sub(msg, stop + 1)
end

local chunk = 1000 -- unpack() of a whole batch could exceed the Lua stack
local jobs
if kind == 'celery' then
  jobs = rcall('LPOP', from_list, max)
  if not jobs then return {0, 0} end
  for i = 1, #jobs do jobs[i] = rekey(jobs[i]) end
  for i = 1, #jobs, chunk do
    rcall('RPUSH', to_list, unpack(jobs, i, math.min(i + chunk - 1, #jobs)))
  end
else
  jobs = rcall('RPOP', from_list, max)
  if not jobs then return {0, 0} end
  for i = 1, #jobs, chunk do
    rcall('LPUSH', to_list, unpack(jobs, i, math.min(i + chunk - 1, #jobs)))
  end
end
return {#jobs, rcall('LLEN', from_list)}
