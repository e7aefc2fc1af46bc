--[[
  route_enqueue: pick the lane of one job, push it, count it. One atomic step, so a weight change
  and an enqueue never interleave (DESIGN.md section 2).

  KEYS[1] config         hash  queue routing config (enabled, weight_bp, sticky, salt, ...)
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] lane_stable    list  stable lane (LPUSH here, workers pop from the right)
  KEYS[4] lane_canary    list  canary lane
  KEYS[5] routed         hash  jobs routed per lane ("stable", "canary")

  ARGV[1] envelope       the job envelope (JSON, opaque to this script)
  ARGV[2] sticky_key     key hashed in sticky mode (defaults to the job id client side)
  ARGV[3] tenant         tenant label or ''
  ARGV[4] draw           0..9999, the client's random draw, used in random mode
  ARGV[5] client_bucket  bucket precomputed by the client, or '' to compute it here
  ARGV[6] client_salt    salt the client used for ARGV[5]

  Returns {lane, weight_bp in force, salt in force, bucket or draw compared (-1 at weight 0)}
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key = KEYS[3], KEYS[4], KEYS[5]

-- @include fnv1a
-- @include routing

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
local weight = effective_weight(cfg, tenant_key, ARGV[3])
local lane, n = decide_lane(cfg, weight, ARGV[2], ARGV[4], ARGV[5], ARGV[6])

if lane == 'canary' then
  rcall('LPUSH', canary_key, ARGV[1])
else
  rcall('LPUSH', stable_key, ARGV[1])
end
rcall('HINCRBY', routed_key, lane, 1)
return {lane, weight, cfg[4] or '', n}
