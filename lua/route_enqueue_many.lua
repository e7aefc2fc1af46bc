--[[
  route_enqueue_many: route_enqueue for a batch of jobs of one queue in one call. The config is
  read once, so the whole batch sees one weight; batches are bounded by the client (<= 1000).

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] lane_stable    list
  KEYS[4] lane_canary    list
  KEYS[5] routed         hash  jobs routed per lane

  ARGV[1] client_salt    salt the client used for the precomputed buckets
  ARGV[2 + 5*(i-1) ..]   per job i: envelope, sticky_key, tenant, draw, client_bucket ('' = compute)

  Returns {lanes, weight_bp in force for the first job, salt in force}: lanes is a string with
  one character per job, 's' (stable) or 'c' (canary), in input order.
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key = KEYS[3], KEYS[4], KEYS[5]

-- @include fnv1a
-- @include routing

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
local client_salt = ARGV[1]
local stable, canary, lanes = {}, {}, {}
local queue_weight = effective_weight(cfg, tenant_key, '')
local tenant_cache = {}
local first_weight

for i = 2, #ARGV, 5 do
  local tenant = ARGV[i + 2]
  local weight = queue_weight
  if tenant ~= '' then
    weight = tenant_cache[tenant]
    if weight == nil then
      weight = effective_weight(cfg, tenant_key, tenant)
      tenant_cache[tenant] = weight
    end
  end
  if first_weight == nil then first_weight = weight end
  local lane = decide_lane(cfg, weight, ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], client_salt)
  if lane == 'canary' then
    canary[#canary + 1] = ARGV[i]
    lanes[#lanes + 1] = 'c'
  else
    stable[#stable + 1] = ARGV[i]
    lanes[#lanes + 1] = 's'
  end
end

if #stable > 0 then
  rcall('LPUSH', stable_key, unpack(stable))
  rcall('HINCRBY', routed_key, 'stable', #stable)
end
if #canary > 0 then
  rcall('LPUSH', canary_key, unpack(canary))
  rcall('HINCRBY', routed_key, 'canary', #canary)
end
return {table.concat(lanes), first_weight or queue_weight, cfg[4] or ''}
