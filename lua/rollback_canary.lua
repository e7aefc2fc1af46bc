--[[
  rollback_canary: close the canary lane in one step: weight 0 (tenant overrides removed), the
  canary version cleared and marked rolled back, so its workers stop taking jobs and returning
  jobs go to stable. Draining what is left in the canary lane is drain_lane's job.

  KEYS[1] config         hash  queue config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] rolled_back    set   versions rolled back on this queue

  ARGV[1] version        version to mark rolled back ('' = the canary version in force)
  ARGV[2] now_ms         client clock

  Returns {previous weight_bp, version marked ('' if none)}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key = KEYS[1], KEYS[2], KEYS[3]

-- @include canary_flip
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'set'}})
if bad then return guard_fail(-13, bad) end
if ARGV[1] == nil then return guard_fail(-4, 'ARGV[1] version missing') end
if int_arg(ARGV[2], 0) == nil then return guard_fail(-4, 'ARGV[2] now_ms must be an integer') end
if not stored_int_ok(rcall('HGET', config_key, 'weight_bp')) then
  return guard_fail(-4, 'config weight_bp is not an integer')
end

local version = ARGV[1]
if version == '' then version = rcall('HGET', config_key, 'canary_version') or '' end
local prev = close_canary_rollback(config_key, tenant_key, rolled_back_key, version, ARGV[2])
return {prev, version}
