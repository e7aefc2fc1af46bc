-- Lane decision shared by route_enqueue, route_enqueue_many and explain_route.
-- cfg = {enabled, weight_bp, sticky, salt}; tenant weights override the queue weight.
local function effective_weight(cfg, tenant_key, tenant)
  if cfg[1] == '0' then return 0 end
  local w = tonumber(cfg[2]) or 0
  if tenant ~= '' then
    local tw = redis.call('HGET', tenant_key, tenant) -- a global, not an upvalue (guard_core)
    if tw then w = tonumber(tw) end
  end
  return w
end

-- Returns lane ('stable'|'canary') and the number compared with the weight (bucket or draw).
-- A client-computed bucket is trusted only when it was computed with the salt now in force.
local function decide_lane(cfg, weight, sticky_key, draw, client_bucket, client_salt)
  if weight <= 0 then return 'stable', -1 end
  local n
  if cfg[3] == '0' then
    n = tonumber(draw)
  else
    local salt = cfg[4] or ''
    if client_bucket ~= '' and client_salt == salt then
      n = tonumber(client_bucket)
    else
      n = sticky_bucket(salt, sticky_key)
    end
  end
  if n < weight then return 'canary', n end
  return 'stable', n
end
