--[[
  deployment_rollback: roll a deployment back in one step (DESIGN.md invariant 2): weight 0 for
  the very next enqueue, tenant overrides gone, the canary version marked rolled back (its
  workers retire), the deployment `rolling_back` until drain_lane has emptied the canary lane.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] rolled_back    set     versions rolled back on this queue
  KEYS[4] deployment     hash    the queue's current deployment
  KEYS[5] events         list    this deployment's event log, newest first: "<seq> <event JSON>"
                                 (a stream for deployments started before issue 15)
  KEYS[6] fence          string  highest controller epoch that wrote to the queue
  KEYS[7] outbox         stream  the queue's notification outbox (notable events, docs/notifications.md)
  KEYS[8] deployment:large hash the deployment's values over 64 bytes (plan, ctl, ...): see
                                 dep_write in lua/includes/deployment.lua

  ARGV[1] epoch          leader epoch, or '' for an operator
  ARGV[2] expected_rev   rev the writer read, or ''
  ARGV[3] now_ms         client clock
  ARGV[4] n field pairs, then field, value pairs (reason, ...)
  ARGV[last] event       JSON

  Returns {1, rev, weight before} or {0, rev, 0} if it was already rolling back
  Errors  -7 fenced, -9 rev changed, -12 nothing to roll back (none, finished, or promoting);
          as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument (the fence is raised only by a call that writes)
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key = KEYS[1], KEYS[2], KEYS[3]
local dep_key, events_key, fence_key, outbox_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local large_key = KEYS[8]

-- @include fence
-- @include deployment
-- @include canary_flip
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'set'}, {4, 'hash'}, {5, 'list', 'stream'}, {6, 'string'},
                          {7, 'stream'}, {8, 'hash'}})
if bad then return guard_fail(-13, bad) end
local fence_err = fence_args_error(fence_key, ARGV[1])
if fence_err then return fence_err end
if int_arg(ARGV[3], 0) == nil then return guard_fail(-4, 'ARGV[3] now_ms must be an integer') end
if pairs_end(ARGV, 4, #ARGV) ~= #ARGV then return guard_fail(-4, 'field pairs from ARGV[4], then the event') end
if not stored_int_ok(rcall('HGET', config_key, 'weight_bp')) then
  return guard_fail(-4, 'config weight_bp is not an integer')
end
local raise_fence = fence_gate(fence_key, ARGV[1])
if not raise_fence then return -7 end
local state, err = dep_check(dep_key, ARGV[2])
if err then return err end
if state == 'rolling_back' then raise_fence(); return {0, tonumber(rcall('HGET', dep_key, 'rev')), 0} end
if not ACTIVE[state] or state == 'promoting' then return -12 end

raise_fence()
local now_ms = ARGV[3]
local fields = read_pairs(ARGV, 4)
local version = rcall('HGET', dep_key, 'canary_version') or ''
local prev = close_canary_rollback(config_key, tenant_key, rolled_back_key, version, now_ms)
rcall('HSET', dep_key, 'state', 'rolling_back', 'weight_bp', 0, 'rollback_at', now_ms)
local rev = dep_write(dep_key, large_key, fields, now_ms)
add_event(events_key, ARGV[#ARGV], outbox_key, dep_key, large_key)
return {1, rev, prev}
