-- Closing the canary lane, shared by the manual and the deployment scripts.

-- Rollback: weight 0 at once (tenant overrides removed: every tenant falls back to 0), the
-- canary version cleared and marked rolled back, so its workers retire and jobs coming back
-- (retries, reaped jobs) go to stable. Returns the weight that was in force.
local function close_canary_rollback(config_key, tenant_key, rolled_back_key, version, now_ms)
  local prev = tonumber(rcall('HGET', config_key, 'weight_bp') or '0')
  rcall('HSET', config_key, 'weight_bp', 0, 'canary_version', '', 'updated_at', now_ms)
  rcall('DEL', tenant_key)
  if version ~= '' then rcall('SADD', rolled_back_key, version) end
  rcall('HINCRBY', config_key, 'rev', 1)
  return prev
end

-- Promotion: the canary version becomes stable; the old stable version is remembered so its
-- workers keep serving the stable lane as outdated (promotion never drops capacity).
local function close_canary_promote(config_key, tenant_key, former_key, rolled_back_key,
                                    old, new, now_ms)
  rcall('HSET', config_key, 'stable_version', new, 'canary_version', '', 'weight_bp', 0,
        'updated_at', now_ms)
  rcall('DEL', tenant_key)
  if old ~= '' and old ~= new then rcall('ZADD', former_key, now_ms, old) end
  rcall('ZREM', former_key, new)
  rcall('SREM', rolled_back_key, new)
  rcall('HINCRBY', config_key, 'rev', 1)
end
