--[[
  route_xadd_many: route_xadd for a batch of jobs of one queue in one call (the Streams
  backend's route_enqueue_many, same ARGV and replies). The config is read once, so the whole
  batch sees one weight; batches are bounded by the client (<= 1000). Each job is XADDed to its
  lane's stream (field e = the envelope), in input order. The consumer group is
  STREAM_GROUP of lua/includes/streams.lua (= keys.STREAM_GROUP, checked by a test), created
  with a missing stream, so the ARGV stay route_enqueue_many's.

  KEYS[1] config         hash    queue routing config
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] stream_stable  stream
  KEYS[4] stream_canary  stream
  KEYS[5] routed         hash    jobs routed per lane
  KEYS[6] idem           string  optional: idempotency record of this batch (its lanes string)

  ARGV[1] client_salt    salt the client used for the precomputed buckets
  ARGV[2] idem_ttl_ms    with KEYS[6]: how long the record is kept (1..86400000), else ''
  ARGV[3 + 5*(i-1) ..]   per job i: envelope, sticky_key, tenant, draw, client_bucket ('' = compute)

  Returns {lanes, weight_bp in force for the first job, salt in force, 1 if KEYS[6] showed the
  batch already landed (nothing added again) else 0}: lanes is a string with one character per
  job, 's' (stable) or 'c' (canary), in input order.
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument (naming the job's index in the batch), -14 a lane stream
          would hold more than max_backlog entries with this batch's share (the whole batch is
          refused; a batch already landed (KEYS[6]) is answered, never refused)
]]
local rcall = redis.call
-- @include fnv1a
-- @include routing
-- @include guard
-- @include streams

local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key = KEYS[3], KEYS[4], KEYS[5]
local idem_key = KEYS[6]

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'stream'}, {4, 'stream'}, {5, 'hash'}})
if bad == nil and idem_key then bad = bad_key_type({{6, 'string'}}) end
if bad then return guard_fail(-13, bad) end
local ttl
if idem_key then
  ttl = int_arg(ARGV[2], 1, 86400000)
  if ttl == nil then return guard_fail(-4, 'ARGV[2] idem_ttl_ms must be 1..86400000') end
end
if not idem_key and ARGV[2] ~= '' then
  return guard_fail(-4, 'ARGV[2] idem_ttl_ms must be empty without KEYS[6]')
end
if #ARGV < 7 or (#ARGV - 2) % 5 ~= 0 then
  return guard_fail(-4, 'expected 2 + 5 ARGV per job, got ' .. #ARGV)
end
if idem_key then
  local first = rcall('GET', idem_key)
  if first then
    local cfg0 = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
    return {first, tonumber(cfg0[2]) or 0, cfg0[4] or '', 1}
  end
end

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt', 'max_backlog')
if not stored_int_ok(cfg[2]) then return guard_fail(-4, 'config weight_bp is not an integer') end
if not stored_int_ok(cfg[5]) then return guard_fail(-4, 'config max_backlog is not an integer') end

-- max_backlog as route_xadd: the lane stream's entries (waiting or running) plus this batch's
local function stream_full(lane, key, adding)
  local limit = tonumber(cfg[5] or '0') or 0
  if limit <= 0 or adding <= 0 then return nil end
  local held = rcall('XLEN', key)
  if held + adding <= limit then return nil end
  local queue = string.match(config_key, '{(.-)}') or config_key
  return guard_fail(-14, 'queue ' .. queue .. ': the ' .. lane .. ' lane holds ' .. held ..
    ' jobs, max_backlog is ' .. limit .. '; ' .. adding .. ' more refused, nothing enqueued')
end
local client_salt = ARGV[1]
local stable, canary, lanes = {}, {}, {}
local queue_weight = effective_weight(cfg, tenant_key, '')
local tenant_cache = {}
local first_weight

for i = 3, #ARGV, 5 do
  local job = (i - 3) / 5
  if ARGV[i] == '' then return guard_fail(-4, 'job ' .. job .. ': envelope is empty') end
  if int_arg(ARGV[i + 3], 0, 9999) == nil then
    return guard_fail(-4, 'job ' .. job .. ': draw must be 0..9999')
  end
  if ARGV[i + 4] ~= '' and int_arg(ARGV[i + 4], 0, 9999) == nil then
    return guard_fail(-4, 'job ' .. job .. ': client_bucket must be 0..9999 or empty')
  end
  local tenant = ARGV[i + 2]
  local weight = queue_weight
  if tenant ~= '' then
    weight = tenant_cache[tenant]
    if weight == nil then
      weight = effective_weight(cfg, tenant_key, tenant)
      if weight == nil then return guard_fail(-4, 'tenant ' .. tenant .. ': weight is not an integer') end
      tenant_cache[tenant] = weight
    end
  end
  if first_weight == nil then first_weight = weight end
  local lane = decide_lane(cfg, weight, ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], client_salt)
  if lane == 'canary' then
    canary[#canary + 1] = ARGV[i]
    lanes[#lanes + 1] = 'c'
  else
    stable[#stable + 1] = ARGV[i]
    lanes[#lanes + 1] = 's'
  end
end

-- the whole batch or none of it: each lane must have room for all the jobs it would take
local full = stream_full('stable', stable_key, #stable) or
  stream_full('canary', canary_key, #canary)
if full then return full end

if #stable > 0 then
  ensure_stream(stable_key, STREAM_GROUP)
  for _, env in ipairs(stable) do rcall('XADD', stable_key, '*', 'e', env) end
  rcall('HINCRBY', routed_key, 'stable', #stable)
end
if #canary > 0 then
  ensure_stream(canary_key, STREAM_GROUP)
  for _, env in ipairs(canary) do rcall('XADD', canary_key, '*', 'e', env) end
  rcall('HINCRBY', routed_key, 'canary', #canary)
end
local lanes_text = table.concat(lanes)
if idem_key then rcall('SET', idem_key, lanes_text, 'PX', ttl) end
return {lanes_text, first_weight or queue_weight, cfg[4] or '', 0}
