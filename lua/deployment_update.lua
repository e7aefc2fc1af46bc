--[[
  deployment_update: change an active deployment (stage, state, analysis, timers) and, with it,
  the queue's routing weight, atomically. Fenced: a controller passes its leader epoch, an
  operator ''. Compare-and-set on rev, so a decision taken on stale state is dropped.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] deployment     hash    the queue's current deployment
  KEYS[4] events         stream  this deployment's event log
  KEYS[5] fence          string  highest controller epoch that wrote to the queue

  ARGV[1] epoch          leader epoch, or '' for an operator
  ARGV[2] expected_rev   rev the writer read, or '' to skip the check
  ARGV[3] now_ms         client clock
  ARGV[4] weight_bp      new routing weight, or '' to leave it
  ARGV[5] tenants_mode   'keep' | 'set'
  ARGV[6] n tenant pairs, then tenant, weight_bp pairs (with 'set')
  ARGV[.] n field pairs, then field, value pairs of the deployment hash
  ARGV[last] event       JSON, or ''

  Returns the new rev
  Errors  -7 fenced (a newer leader), -9 rev changed, -12 no such deployment or it finished,
          -2 a weight above max_weight
]]
local rcall = redis.call
local config_key, tenant_key, dep_key, events_key, fence_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- @include fence
-- @include deployment

if not fence_ok(fence_key, ARGV[1]) then return -7 end
local state, err = dep_check(dep_key, ARGV[2])
if err then return err end
if not ACTIVE[state] then return -12 end

local now_ms = ARGV[3]
local weight = nil
if ARGV[4] ~= '' then weight = tonumber(ARGV[4]) end
local tenants, i = read_pairs(ARGV, 6)
local fields = read_pairs(ARGV, i)
if not within_max(config_key, weight, tenants) then return -2 end

if weight ~= nil then
  rcall('HSET', config_key, 'weight_bp', weight, 'updated_at', now_ms)
  rcall('HINCRBY', config_key, 'rev', 1)
  rcall('HSET', dep_key, 'weight_bp', weight)
end
if ARGV[5] == 'set' then set_tenants(tenant_key, tenants) end
local rev = dep_write(dep_key, fields, now_ms)
add_event(events_key, ARGV[#ARGV])
return rev
