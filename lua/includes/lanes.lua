-- Where jobs of a lane go when they come back (retry due, reaped from a dead worker): the canary
-- lane only while it is open (a canary version is set or the weight is above 0); after a
-- rollback or a promotion closed it, they go to stable.
local function canary_open(config_key)
  local cfg = rcall('HMGET', config_key, 'canary_version', 'weight_bp')
  return (cfg[1] and cfg[1] ~= '') or (tonumber(cfg[2] or '0') or 0) > 0
end
