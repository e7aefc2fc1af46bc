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

-- A deployment is two hashes: `deployment` holds the values of at most LARGE_VALUE bytes,
-- `deployment:large` the longer ones (plan, ctl, a long reason): each field lives in one of
-- the two (the other's copy is removed when it is written), so the deployment hash stays a
-- listpack (~0.5 KB) instead of a hashtable (~2 KB of overhead for ~22 fields; issue 15).
-- 64 is Redis' default hash-max-listpack-value. Only the fields of free-form values move (the
-- ones below); id, state, rev, versions, stage and the weights stay in the deployment hash
-- whatever their length, for the readers that HGET them there (these scripts, /metrics).
-- Readers of whole deployments merge the two (pycanary/deployments.py).
local LARGE_VALUE = 64
local MOVABLE = {plan = true, ctl = true, meta = true, drain = true, reason = true,
                 manual_only = true, webhooks = true, tenants_bp = true}
local function dep_write(dep_key, large_key, pairs, now_ms)
  local small, large, moved, shrunk = {}, {}, {}, {}
  for j = 1, #pairs, 2 do
    local f, v = pairs[j], pairs[j + 1]
    if #v > LARGE_VALUE and MOVABLE[f] then
      large[#large + 1] = f; large[#large + 1] = v; moved[#moved + 1] = f
    else
      small[#small + 1] = f; small[#small + 1] = v; shrunk[#shrunk + 1] = f
    end
  end
  if #moved > 0 then rcall('HDEL', dep_key, unpack(moved)) end
  if #large > 0 then rcall('HSET', large_key, unpack(large)) end
  if #shrunk > 0 and rcall('EXISTS', large_key) == 1 then rcall('HDEL', large_key, unpack(shrunk)) end
  if #small > 0 then rcall('HSET', dep_key, unpack(small)) end
  rcall('HSET', dep_key, 'updated_at', now_ms)
  return rcall('HINCRBY', dep_key, 'rev', 1)
end

-- Every field of the deployment, the two hashes merged (deployment_finish's history copy).
local function dep_all(dep_key, large_key)
  local out = {}
  for _, key in ipairs({large_key, dep_key}) do
    local flat = rcall('HGETALL', key)
    for j = 1, #flat, 2 do out[flat[j]] = flat[j + 1] end
  end
  return out
end

-- Notable event types: each one is also appended to the queue's outbox, in the same script
-- as the state change it reports (docs/notifications.md), for the sender (pycanary/notify.py)
-- to deliver. pycanary/defaults.py NOTIFY_EVENT_TYPES and OUTBOX_MAXLEN mirror these two (a
-- test checks they agree). A "verdict" event whose verdict is FAIL is notified as
-- "check_failed".
local NOTIFY = {started = true, check_failed = true, rollback = true, rolled_back = true,
                paused = true, awaiting_promotion = true, gate_waiting = true, stage = true,
                promoted = true, completed = true}
local OUTBOX_MAXLEN = 10000

-- The outbox type of an event (JSON text), or nil when it is not notable. Never raises (an
-- event that does not decode is simply not notable), so it cannot stop a script half-way.
local function notify_kind(event)
  local ok, decoded = pcall(cjson.decode, event)
  if not ok or type(decoded) ~= 'table' then return nil end
  local kind = decoded['type']
  local data = decoded['data']
  if kind == 'verdict' and type(data) == 'table' and data['verdict'] == 'FAIL' then
    kind = 'check_failed'
  end
  if type(kind) == 'string' and NOTIFY[kind] then return kind end
  return nil
end

-- The event log of a deployment: a list, newest first, each entry "<seq> <event JSON>" where
-- seq counts the deployment's events from 1 (the entry's id, stable: pycanary/deployments.py
-- events), capped at EVENTS_MAX. A list, not a stream: a stream allocates a 4 KB node at its
-- first entry, more than the few events of a deployment take (issue 15). A deployment started
-- before issue 15 keeps its stream (XADD), so its log reads on unchanged.
local EVENTS_MAX = 2000
local function log_event(events_key, event)
  local t = rcall('TYPE', events_key)
  if type(t) == 'table' then t = t['ok'] end
  if t == 'stream' then
    rcall('XADD', events_key, 'MAXLEN', '~', EVENTS_MAX, '*', 'e', event)
    return
  end
  local head = rcall('LINDEX', events_key, 0)
  local seq = 1
  if head then seq = (tonumber(string.match(head, '^(%d+) ')) or 0) + 1 end
  rcall('LPUSH', events_key, seq .. ' ' .. event)
  if seq > EVENTS_MAX then rcall('LTRIM', events_key, 0, EVENTS_MAX - 1) end
end

-- Append an event to the deployment's log and, when it is notable, a notification to the
-- outbox with what a receiver needs (read from the deployment's two hashes as just written).
-- The types of events_key (list, or stream before issue 15) and outbox_key are checked by the
-- caller's bad_key_type before its first write.
local function add_event(events_key, event, outbox_key, dep_key, large_key)
  if event ~= nil and event ~= '' then
    log_event(events_key, event)
    local kind = notify_kind(event)
    if kind then
      local d = rcall('HMGET', dep_key, 'id', 'canary_version', 'stable_version', 'stage',
                      'weight_bp', 'state', 'webhooks')
      if not d[7] then d[7] = rcall('HGET', large_key, 'webhooks') end -- a long list of them
      -- the queue is the key's hash tag (queue names hold no braces)
      local queue = string.match(outbox_key, '{([^{}]*)}:outbox$') or ''
      rcall('XADD', outbox_key, 'MAXLEN', '~', OUTBOX_MAXLEN, '*', 'type', kind, 'e', event,
            'queue', queue, 'deployment', d[1] or '', 'version', d[2] or '', 'stable_version', d[3] or '',
            'stage', d[4] or '0', 'weight_bp', d[5] or '0', 'state', d[6] or '',
            'webhooks', d[7] or '')
    end
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
