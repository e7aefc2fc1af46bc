--[[
  explain_route: read-only. Which lane would a job get now, and why. Used by
  `pycanary route explain` and by the tests that check Python and Lua agree on the bucket.

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides

  ARGV[1] sticky_key
  ARGV[2] tenant         or ''
  ARGV[3] draw           0..9999 (random mode)

  Returns {lane, weight_bp in force, sticky bucket computed in Lua, salt in force, mode}
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]

-- @include fnv1a
-- @include routing

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
local weight = effective_weight(cfg, tenant_key, ARGV[2])
local lane = decide_lane(cfg, weight, ARGV[1], ARGV[3], '', '')
local mode = 'sticky'
if cfg[3] == '0' then mode = 'random' end
return {lane, weight, sticky_bucket(cfg[4] or '', ARGV[1]), cfg[4] or '', mode}
