--[[
  bind_broker: record which broker lists hold a queue's two lanes when a Celery or RQ
  application is the one publishing (pycanary/integrations/), so that every drain of the queue
  (rollback, promotion, `pycanary drain`) moves the broker's waiting messages too.

  KEYS[1] broker         hash  kind, stable, canary (full Redis key names of the broker
                               lists), stable_name, canary_name (the queue names the
                               messages carry)

  ARGV[1] kind           'celery' (kombu lists: LPUSH, taken from the right) | 'rq' (RQ
                         lists: RPUSH, taken from the left)
  ARGV[2] stable         the broker list of the stable lane (e.g. "payments")
  ARGV[3] canary         the broker list of the canary lane (e.g. "payments.canary")
  ARGV[4] stable_name    the stable queue's name (the list's key without kombu's
                         global_keyprefix; RQ: the RQ queue name)
  ARGV[5] canary_name    the canary queue's name

  Returns 1 when the binding changed, 0 when it was already this one
  Errors  (error reply "PYCANARY <code> why", before any write) -13 the key has the wrong
          type, -4 a malformed argument (unknown kind, empty or equal lists)
]]
local rcall = redis.call
local broker_key = KEYS[1]

-- @include guard

local bad = bad_key_type({{1, 'hash'}})
if bad then return guard_fail(-13, bad) end
local kind, stable, canary, stable_name, canary_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if kind ~= 'celery' and kind ~= 'rq' then return guard_fail(-4, 'ARGV[1] kind must be celery or rq') end
if #ARGV ~= 5 then return guard_fail(-4, 'expected 5 ARGV') end
if stable == '' or canary == '' or stable == canary then
  return guard_fail(-4, 'ARGV[2] and ARGV[3] must be two different list names')
end
if stable_name == '' or canary_name == '' or stable_name == canary_name then
  return guard_fail(-4, 'ARGV[4] and ARGV[5] must be two different queue names')
end
local cur = rcall('HMGET', broker_key, 'kind', 'stable', 'canary', 'stable_name', 'canary_name')
if cur[1] == kind and cur[2] == stable and cur[3] == canary and cur[4] == stable_name and
    cur[5] == canary_name then
  return 0
end
rcall('HSET', broker_key, 'kind', kind, 'stable', stable, 'canary', canary,
      'stable_name', stable_name, 'canary_name', canary_name)
return 1
