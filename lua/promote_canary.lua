--[[
  promote_canary: the canary version becomes the stable version in one step. The old stable
  version is remembered as former stable, so its workers keep serving the stable lane as
  outdated (promotion never drops capacity); weight back to 0, tenant overrides removed.

  KEYS[1] config         hash  queue config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] former_stable  zset  version -> when it stopped being stable (ms)
  KEYS[4] rolled_back    set   versions rolled back on this queue

  ARGV[1] now_ms         client clock

  Returns {old stable version ('' if none), new stable version}
  Errors  -6 no canary version to promote; as error replies before any write: -13 a key has
          the wrong type, -4 a malformed argument
]]
local rcall = redis.call
local config_key, tenant_key, former_key, rolled_back_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include canary_flip
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'zset'}, {4, 'set'}})
if bad then return guard_fail(-13, bad) end
if int_arg(ARGV[1], 0) == nil then return guard_fail(-4, 'ARGV[1] now_ms must be an integer') end

local cfg = rcall('HMGET', config_key, 'stable_version', 'canary_version')
local old, new = cfg[1] or '', cfg[2] or ''
if new == '' then return -6 end
close_canary_promote(config_key, tenant_key, former_key, rolled_back_key, old, new, ARGV[1])
return {old, new}
