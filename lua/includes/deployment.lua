-- Shared pieces of the deployment scripts. A deployment hash carries `state` and `rev`; every
-- change bumps rev, and a writer that read rev r passes it so that a change made meanwhile
-- (an operator's pause, a rollback) is never overwritten: compare-and-set, error -9.
local ACTIVE = {active = true, paused = true, awaiting_promotion = true,
                promoting = true, rolling_back = true}

local function dep_check(dep_key, expected_rev)
  local cur = rcall('HMGET', dep_key, 'state', 'rev')
  if not cur[1] then return nil, -12 end
  if expected_rev ~= '' and cur[2] ~= expected_rev then return nil, -9 end
  return cur[1], nil
end

-- ARGV from index i: n, then n field/value pairs. Returns the pairs and the index after them.
local function read_pairs(args, i)
  local n = tonumber(args[i])
  local out = {}
  for j = i + 1, i + 2 * n do out[#out + 1] = args[j] end
  return out, i + 1 + 2 * n
end

local function dep_write(dep_key, pairs, now_ms)
  if #pairs > 0 then rcall('HSET', dep_key, unpack(pairs)) end
  rcall('HSET', dep_key, 'updated_at', now_ms)
  return rcall('HINCRBY', dep_key, 'rev', 1)
end

local function add_event(events_key, event)
  if event ~= nil and event ~= '' then
    rcall('XADD', events_key, 'MAXLEN', '~', 2000, '*', 'e', event)
  end
end

-- Weight guard: nothing above the queue's max_weight (tenant weights included).
local function within_max(config_key, weight, tenant_pairs)
  local max_weight = tonumber(rcall('HGET', config_key, 'max_weight_bp') or '10000')
  if weight ~= nil and weight > max_weight then return false end
  for j = 2, #tenant_pairs, 2 do
    if tonumber(tenant_pairs[j]) > max_weight then return false end
  end
  return true
end

local function set_tenants(tenant_key, tenant_pairs)
  rcall('DEL', tenant_key)
  if #tenant_pairs > 0 then rcall('HSET', tenant_key, unpack(tenant_pairs)) end
end
