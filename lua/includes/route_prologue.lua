-- The opening route_enqueue and route_enqueue_many share: the routing keys by name, every key's
-- type and the optional idempotency record's TTL checked before any write, the queue's routing
-- config read once, and the max_backlog guard. The caller defines `rcall` first.
-- @include fnv1a
-- @include routing
-- @include guard

local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key = KEYS[3], KEYS[4], KEYS[5]
local idem_key = KEYS[6]

-- Key types, then ARGV[ttl_index] (idem_ttl_ms) when KEYS[6] is given. Returns the TTL (nil
-- without KEYS[6]) and nil, or nil and the guard's error reply.
local function route_prologue(ttl_index)
  local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'list'}, {4, 'list'}, {5, 'hash'}})
  if bad == nil and idem_key then bad = bad_key_type({{6, 'string'}}) end
  if bad then return nil, guard_fail(-13, bad) end
  if not idem_key then return nil, nil end
  local ttl = int_arg(ARGV[ttl_index], 1, 86400000)
  if ttl == nil then
    return nil, guard_fail(-4, 'ARGV[' .. ttl_index .. '] idem_ttl_ms must be 1..86400000')
  end
  return ttl, nil
end

-- {enabled, weight_bp, sticky, salt, max_backlog} of the queue, or nil and an error reply when a
-- stored number is garbled (another client wrote it).
local function route_config()
  local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt', 'max_backlog')
  if not stored_int_ok(cfg[2]) then return nil, guard_fail(-4, 'config weight_bp is not an integer') end
  if not stored_int_ok(cfg[5]) then return nil, guard_fail(-4, 'config max_backlog is not an integer') end
  return cfg, nil
end

-- max_backlog: nil when `adding` more jobs fit on the lane (limit 0 or unset: no limit), else the
-- error reply -14 naming the queue, the lane's backlog and the limit. Checked per lane, for the
-- lane the jobs would go to; the drain (drain_lane.lua) never asks, so it never drops a job.
local function backlog_refusal(cfg, lane, lane_key, adding)
  local limit = tonumber(cfg[5] or '0') or 0
  if limit <= 0 or adding <= 0 then return nil end
  local held = rcall('LLEN', lane_key)
  if held + adding <= limit then return nil end
  local queue = string.match(config_key, '{(.-)}') or config_key
  return guard_fail(-14, 'queue ' .. queue .. ': the ' .. lane .. ' lane holds ' .. held ..
    ' jobs, max_backlog is ' .. limit .. '; ' .. adding .. ' more refused, nothing enqueued')
end
