--[[
  explain_route: read-only. Which lane would a job get now, and why. Used by
  `pycanary route explain` and by the tests that check Python and Lua agree on the bucket.

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides

  ARGV[1] sticky_key
  ARGV[2] tenant         or ''
  ARGV[3] draw           0..9999 (random mode)

  Returns {lane, weight_bp in force, sticky bucket computed in Lua, salt in force, mode}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]

-- @include fnv1a
-- @include routing
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}})
if bad then return guard_fail(-13, bad) end
if int_arg(ARGV[3], 0, 9999) == nil then return guard_fail(-4, 'ARGV[3] draw must be 0..9999') end

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
if not stored_int_ok(cfg[2]) then return guard_fail(-4, 'config weight_bp is not an integer') end
local weight = effective_weight(cfg, tenant_key, ARGV[2])
if weight == nil then return guard_fail(-4, 'tenant weight is not an integer') end
local lane = decide_lane(cfg, weight, ARGV[1], ARGV[3], '', '')
local mode = 'sticky'
if cfg[3] == '0' then mode = 'random' end
return {lane, weight, sticky_bucket(cfg[4] or '', ARGV[1]), cfg[4] or '', mode}
