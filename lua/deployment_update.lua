--[[
  deployment_update: change an active deployment (stage, state, analysis, timers) and, with it,
  the queue's routing weight, atomically. Fenced: a controller passes its leader epoch, an
  operator ''. Compare-and-set on rev, so a decision taken on stale state is dropped.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] deployment     hash    the queue's current deployment
  KEYS[4] events         list    this deployment's event log, newest first: "<seq> <event JSON>"
                                 (a stream for deployments started before issue 15)
  KEYS[5] fence          string  highest controller epoch that wrote to the queue
  KEYS[6] analyses       list    the deployment's latest analyses (newest first, capped)
  KEYS[7] outbox         stream  the queue's notification outbox (notable events, docs/notifications.md)
  KEYS[8] deployment:large hash the deployment's values over 64 bytes (plan, ctl, ...): see
                                 dep_write in lua/includes/deployment.lua

  ARGV[1] epoch          leader epoch, or '' for an operator
  ARGV[2] expected_rev   rev the writer read, or '' to skip the check
  ARGV[3] now_ms         client clock
  ARGV[4] weight_bp      new routing weight, or '' to leave it
  ARGV[5] tenants_mode   'keep' | 'set'
  ARGV[6] n tenant pairs, then tenant, weight_bp pairs (with 'set')
  ARGV[.] n field pairs, then field, value pairs of the deployment hash
  ARGV[.] n events, then the events (JSON)
  ARGV[.] analysis       JSON record of the check behind this write, or '' (kept only if the
                         write is accepted, so a fenced-off leader leaves no trace)
  ARGV[.] keep           how many analyses to keep

  Returns the new rev
  Errors  -7 fenced (a newer leader), -9 rev changed, -12 no such deployment or it finished,
          -2 a weight above max_weight;
          as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument (the fence is raised only by a call that writes)
]]
local rcall = redis.call
local config_key, tenant_key, dep_key, events_key, fence_key, analyses_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local large_key = KEYS[8]

-- @include fence
-- @include deployment
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'hash'}, {4, 'list', 'stream'}, {5, 'string'}, {6, 'list'},
                          {7, 'stream'}, {8, 'hash'}})
if bad then return guard_fail(-13, bad) end
local fence_err = fence_args_error(fence_key, ARGV[1])
if fence_err then return fence_err end
if int_arg(ARGV[3], 0) == nil then return guard_fail(-4, 'ARGV[3] now_ms must be an integer') end
if ARGV[4] ~= '' and int_arg(ARGV[4], 0, 10000) == nil then return guard_fail(-1, 'ARGV[4] weight_bp') end
if ARGV[5] ~= 'keep' and ARGV[5] ~= 'set' then return guard_fail(-4, 'ARGV[5] must be keep or set') end
local i0 = pairs_end(ARGV, 6, #ARGV)
if i0 == nil or not tenant_pairs_ok(ARGV, 6) then return guard_fail(-4, 'tenant pairs from ARGV[6]') end
local j0 = pairs_end(ARGV, i0, #ARGV)
if j0 == nil then return guard_fail(-4, 'field pairs from ARGV[' .. i0 .. ']') end
local n_ev = int_arg(ARGV[j0], 0)
if n_ev == nil or j0 + n_ev + 2 ~= #ARGV then return guard_fail(-4, 'events from ARGV[' .. j0 .. ']') end
if int_arg(ARGV[#ARGV], 1) == nil then return guard_fail(-4, 'keep must be a positive integer') end
if not stored_int_ok(rcall('HGET', config_key, 'max_weight_bp')) then
  return guard_fail(-4, 'config max_weight_bp is not an integer')
end
local raise_fence = fence_gate(fence_key, ARGV[1])
if not raise_fence then return -7 end
local state, err = dep_check(dep_key, ARGV[2])
if err then return err end
if not ACTIVE[state] then return -12 end

local now_ms = ARGV[3]
local weight = nil
if ARGV[4] ~= '' then weight = tonumber(ARGV[4]) end
local tenants, i = read_pairs(ARGV, 6)
local fields, j = read_pairs(ARGV, i)
local n_events = tonumber(ARGV[j])
local analysis, keep = ARGV[j + n_events + 1], tonumber(ARGV[j + n_events + 2])
if not within_max(config_key, weight, tenants) then return -2 end

raise_fence()

if weight ~= nil then
  rcall('HSET', config_key, 'weight_bp', weight, 'updated_at', now_ms)
  rcall('HINCRBY', config_key, 'rev', 1)
  rcall('HSET', dep_key, 'weight_bp', weight)
end
if ARGV[5] == 'set' then set_tenants(tenant_key, tenants) end
local rev = dep_write(dep_key, large_key, fields, now_ms)
for k = j + 1, j + n_events do add_event(events_key, ARGV[k], outbox_key, dep_key, large_key) end
if analysis ~= '' then
  rcall('LPUSH', analyses_key, analysis)
  rcall('LTRIM', analyses_key, 0, keep - 1)
end
return rev
