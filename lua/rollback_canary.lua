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
]]
local rcall = redis.call
local config_key, tenant_key, rolled_back_key = KEYS[1], KEYS[2], KEYS[3]

local cfg = rcall('HMGET', config_key, 'weight_bp', 'canary_version')
local version = ARGV[1]
if version == '' then version = cfg[2] or '' end
rcall('HSET', config_key, 'weight_bp', 0, 'canary_version', '', 'updated_at', ARGV[2])
rcall('DEL', tenant_key)
if version ~= '' then rcall('SADD', rolled_back_key, version) end
rcall('HINCRBY', config_key, 'rev', 1)
return {tonumber(cfg[1] or '0'), version}
