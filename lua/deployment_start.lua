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
  KEYS[6] events         list    this deployment's event log, newest first: "<seq> <event JSON>"
                                 (a stream for deployments started before issue 15)
  KEYS[7] outbox         stream  the queue's notification outbox (notable events, docs/notifications.md)
  KEYS[8] deployment:large hash the deployment's values over 64 bytes (plan, ctl, ...): see
                                 dep_write in lua/includes/deployment.lua

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
          -11 the queue has no stable version yet, -2 a weight above max_weight;
          as error replies, before any write: -13 a key has the wrong type, -4 a malformed
          argument, -1 a weight that is not 0..10000
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key, former_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dep_key, events_key, outbox_key, large_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- @include deployment
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'set'}, {4, 'zset'}, {5, 'hash'},
                          {6, 'list', 'stream'}, {7, 'stream'}, {8, 'hash'}})
if bad then return guard_fail(-13, bad) end
if int_arg(ARGV[1], 0) == nil then return guard_fail(-4, 'ARGV[1] now_ms must be an integer') end
if ARGV[2] == nil or ARGV[2] == '' then return guard_fail(-4, 'ARGV[2] canary_version is empty') end
if int_arg(ARGV[3], 0, 10000) == nil then return guard_fail(-1, 'ARGV[3] weight_bp') end
if ARGV[4] ~= '0' and ARGV[4] ~= '1' then return guard_fail(-4, 'ARGV[4] sticky must be 0 or 1') end
local i0 = pairs_end(ARGV, 6, #ARGV)
if i0 == nil or not tenant_pairs_ok(ARGV, 6) then return guard_fail(-4, 'tenant pairs from ARGV[6]') end
if pairs_end(ARGV, i0, #ARGV) ~= #ARGV then
  return guard_fail(-4, 'field pairs from ARGV[' .. i0 .. '], then the event')
end
if not stored_int_ok(rcall('HGET', config_key, 'max_weight_bp')) then
  return guard_fail(-4, 'config max_weight_bp is not an integer')
end

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
rcall('DEL', dep_key, large_key)
rcall('HSET', dep_key, 'stable_version', stable, 'canary_version', version, 'weight_bp', weight,
      'rev', 0)
local rev = dep_write(dep_key, large_key, fields, now_ms)
add_event(events_key, event, outbox_key, dep_key, large_key)
return rev
