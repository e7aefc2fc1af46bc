--[[
  set_weight: set a queue's canary weight, or one tenant's override, refusing anything outside
  0..10000 or above the queue's max_weight guard. Nothing is written when it refuses.

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides

  ARGV[1] weight_bp      integer string 0..10000 ('' with ARGV[4] = 'clear')
  ARGV[2] tenant         tenant label, or '' for the queue-wide weight
  ARGV[3] now_ms         client clock, stored as updated_at
  ARGV[4] mode           'set' | 'clear' (clear removes the tenant override)
  ARGV[5] allow_above    '1' lets an explicit promotion go above max_weight, else '0'

  Returns {previous weight_bp (-1 if none), new weight_bp (-1 if cleared), rev}
  Errors  -1 invalid weight, -2 above max_weight, -4 invalid argument; as error replies before
          any write: -13 a key has the wrong type, -4 now_ms/allow_above/stored max malformed
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]
local tenant, now_ms, mode, allow_above = ARGV[2], ARGV[3], ARGV[4], ARGV[5]

-- @include validate
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}})
if bad then return guard_fail(-13, bad) end
if #ARGV ~= 5 then return guard_fail(-4, 'expected 5 ARGV') end
if int_arg(now_ms, 0) == nil then return guard_fail(-4, 'ARGV[3] now_ms must be an integer') end
if allow_above ~= '0' and allow_above ~= '1' then return guard_fail(-4, 'ARGV[5] must be 0 or 1') end
if not stored_int_ok(rcall('HGET', config_key, 'max_weight_bp')) then
  return guard_fail(-4, 'config max_weight_bp is not an integer')
end

if mode == 'clear' then
  if tenant == '' then return -4 end
  local prev = rcall('HGET', tenant_key, tenant)
  rcall('HDEL', tenant_key, tenant)
  rcall('HSET', config_key, 'updated_at', now_ms)
  return {tonumber(prev) or -1, -1, rcall('HINCRBY', config_key, 'rev', 1)}
end
if mode ~= 'set' then return -4 end

local weight = as_weight(ARGV[1])
if weight == nil then return -1 end
local max_weight = tonumber(rcall('HGET', config_key, 'max_weight_bp') or '10000')
if weight > max_weight and allow_above ~= '1' then return -2 end

local prev
if tenant == '' then
  prev = rcall('HGET', config_key, 'weight_bp')
  rcall('HSET', config_key, 'weight_bp', weight, 'updated_at', now_ms)
else
  prev = rcall('HGET', tenant_key, tenant)
  rcall('HSET', tenant_key, tenant, weight)
  rcall('HSET', config_key, 'updated_at', now_ms)
end
return {tonumber(prev) or -1, weight, rcall('HINCRBY', config_key, 'rev', 1)}
