--[[
  deployment_promote: the final promotion: the canary version becomes the queue's stable
  version in one step; old stable workers keep serving the stable lane as outdated (DESIGN.md
  invariant 3). The deployment is `promoting` until the canary lane is drained into stable.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] rolled_back    set     versions rolled back on this queue
  KEYS[4] former_stable  zset    versions that were stable before
  KEYS[5] deployment     hash    the queue's current deployment
  KEYS[6] events         list    this deployment's event log, newest first: "<seq> <event JSON>"
                                 (a stream for deployments started before issue 15)
  KEYS[7] fence          string  highest controller epoch that wrote to the queue
  KEYS[8] outbox         stream  the queue's notification outbox (notable events, docs/notifications.md)
  KEYS[9] deployment:large hash the deployment's values over 64 bytes (plan, ctl, ...): see
                                 dep_write in lua/includes/deployment.lua

  ARGV[1] epoch          leader epoch, or '' for an operator
  ARGV[2] expected_rev   rev the writer read, or ''
  ARGV[3] now_ms         client clock
  ARGV[4] n field pairs, then field, value pairs
  ARGV[last] event       JSON

  Returns {1, rev} or {0, rev} if it was already promoting
  Errors  -7 fenced, -9 rev changed, -12 nothing to promote (none, finished, rolling back);
          as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument (the fence is raised only by a call that writes)
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key, former_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dep_key, events_key, fence_key, outbox_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local large_key = KEYS[9]

-- @include fence
-- @include deployment
-- @include canary_flip
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'set'}, {4, 'zset'}, {5, 'hash'}, {6, 'list', 'stream'}, {7, 'string'},
                          {8, 'stream'}, {9, 'hash'}})
if bad then return guard_fail(-13, bad) end
local fence_err = fence_args_error(fence_key, ARGV[1])
if fence_err then return fence_err end
if int_arg(ARGV[3], 0) == nil then return guard_fail(-4, 'ARGV[3] now_ms must be an integer') end
if pairs_end(ARGV, 4, #ARGV) ~= #ARGV then return guard_fail(-4, 'field pairs from ARGV[4], then the event') end
local raise_fence = fence_gate(fence_key, ARGV[1])
if not raise_fence then return -7 end
local state, err = dep_check(dep_key, ARGV[2])
if err then return err end
if state == 'promoting' then raise_fence(); return {0, tonumber(rcall('HGET', dep_key, 'rev'))} end
if not ACTIVE[state] or state == 'rolling_back' then return -12 end

raise_fence()
local now_ms = ARGV[3]
local fields = read_pairs(ARGV, 4)
local versions = rcall('HMGET', dep_key, 'stable_version', 'canary_version')
close_canary_promote(config_key, tenant_key, former_key, rolled_back_key, versions[1] or '',
                     versions[2], now_ms)
rcall('HSET', dep_key, 'state', 'promoting', 'weight_bp', 10000, 'promoted_at', now_ms)
local rev = dep_write(dep_key, large_key, fields, now_ms)
add_event(events_key, ARGV[#ARGV], outbox_key, dep_key, large_key)
return {1, rev}
