--[[
  deployment_start: begin a deployment of a canary version on a queue, in one step: the queue's
  routing config takes the first stage's weight, tenant weights, stickiness and salt; the
  deployment hash is written; the event log gets its first entry. At most one active
  deployment per queue.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] rolled_back    set     versions rolled back on this queue
  KEYS[4] former_stable  zset    versions that were stable before
  KEYS[5] deployment     hash    the queue's current deployment
  KEYS[6] events         stream  this deployment's event log

  ARGV[1] now_ms         client clock
  ARGV[2] canary_version
  ARGV[3] weight_bp      first stage's weight
  ARGV[4] sticky         '1' | '0'
  ARGV[5] salt
  ARGV[6] n tenant pairs, then tenant, weight_bp pairs
  ARGV[.] n field pairs, then field, value pairs of the deployment hash
  ARGV[last] event       JSON

  Returns the deployment's rev (1)
  Errors  -8 a deployment is active on the queue, -10 the canary version is the stable one,
          -11 the queue has no stable version yet, -2 a weight above max_weight
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key, former_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dep_key, events_key = KEYS[5], KEYS[6]

-- @include deployment

local now_ms, version, weight = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tenants, i = read_pairs(ARGV, 6)
local fields = read_pairs(ARGV, i)
local event = ARGV[#ARGV]

local state = rcall('HGET', dep_key, 'state')
if state and ACTIVE[state] then return -8 end
local stable = rcall('HGET', config_key, 'stable_version') or ''
if stable == '' then return -11 end
if stable == version then return -10 end
if not within_max(config_key, weight, tenants) then return -2 end

rcall('HSET', config_key, 'canary_version', version, 'weight_bp', weight, 'sticky', ARGV[4],
      'salt', ARGV[5], 'updated_at', now_ms)
rcall('HINCRBY', config_key, 'rev', 1)
set_tenants(tenant_key, tenants)
rcall('SREM', rolled_back_key, version)
rcall('ZREM', former_key, version)
rcall('DEL', dep_key)
rcall('HSET', dep_key, 'stable_version', stable, 'canary_version', version, 'weight_bp', weight,
      'rev', 0)
local rev = dep_write(dep_key, fields, now_ms)
add_event(events_key, event)
return rev
