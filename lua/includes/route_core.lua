-- What route_enqueue and route_enqueue_many share: the routing keys by name, the queue's routing
-- config read once, and the max_backlog guard. Both reads double as their key's type check
-- (checked_call), so route_enqueue's hot path spends no TYPE call on them. The caller defines
-- `rcall` first.
-- @include fnv1a
-- @include routing
-- @include guard_core

local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key = KEYS[3], KEYS[4], KEYS[5]
local idem_key = KEYS[6]

-- {enabled, weight_bp, sticky, salt, max_backlog} of the queue, or nil and an error reply: -13
-- when KEYS[1] is not a hash, -4 when a stored number is garbled (another client wrote it).
local function route_config()
  local cfg, bad = checked_call(1, 'hash', 'HMGET', config_key, 'enabled', 'weight_bp', 'sticky',
                                'salt', 'max_backlog')
  if bad then return nil, bad end
  if not stored_int_ok(cfg[2]) then return nil, guard_fail(-4, 'config weight_bp is not an integer') end
  if not stored_int_ok(cfg[5]) then return nil, guard_fail(-4, 'config max_backlog is not an integer') end
  return cfg, nil
end

-- max_backlog: nil when `adding` more jobs fit on the lane (limit 0 or unset: no limit, and the
-- lane is not read), else the error reply: -14 naming the queue, the lane's backlog and the
-- limit, or -13 when the lane (KEYS[lane_index]) is not a list. Checked per lane, for the lane
-- the jobs would go to; the drain (drain_lane.lua) never asks, so it never drops a job.
local function backlog_refusal(cfg, lane, lane_key, adding, lane_index)
  local limit = tonumber(cfg[5] or '0') or 0
  if limit <= 0 or adding <= 0 then return nil end
  local held, bad = checked_call(lane_index or (lane == 'canary' and 4 or 3), 'list', 'LLEN', lane_key)
  if bad then return bad end
  if held + adding <= limit then return nil end
  local queue = string.match(KEYS[1], '{(.-)}') or KEYS[1] -- globals: fewer upvalues (guard_core)
  return redis.error_reply('PYCANARY -14 queue ' .. queue .. ': the ' .. lane .. ' lane holds ' ..
    held .. ' jobs, max_backlog is ' .. limit .. '; ' .. adding .. ' more refused, nothing enqueued')
end
