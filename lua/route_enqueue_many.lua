--[[
  route_enqueue_many: route_enqueue for a batch of jobs of one queue in one call. The config is
  read once, so the whole batch sees one weight; batches are bounded by the client (<= 1000).

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] lane_stable    list
  KEYS[4] lane_canary    list
  KEYS[5] routed         hash  jobs routed per lane
  KEYS[6] idem           string  optional: idempotency record of this batch (its lanes string)

  ARGV[1] client_salt    salt the client used for the precomputed buckets
  ARGV[2] idem_ttl_ms    with KEYS[6]: how long the record is kept (1..86400000), else ''
  ARGV[3 + 5*(i-1) ..]   per job i: envelope, sticky_key, tenant, draw, client_bucket ('' = compute)

  Returns {lanes, weight_bp in force for the first job, salt in force, 1 if KEYS[6] showed the
  batch already landed (nothing pushed again) else 0}: lanes is a string with one character per
  job, 's' (stable) or 'c' (canary), in input order.
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument (naming the job's index in the batch), -14 a lane would hold
          more than max_backlog jobs with this batch's share (the whole batch is refused; a
          batch already landed (KEYS[6]) is answered, never refused)
]]
local rcall = redis.call
-- @include route_prologue

local ttl, refused = route_prologue(2)
if refused then return refused end
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

local cfg, garbled = route_config()
if garbled then return garbled end
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
local full = backlog_refusal(cfg, 'stable', stable_key, #stable) or
  backlog_refusal(cfg, 'canary', canary_key, #canary)
if full then return full end

if #stable > 0 then
  rcall('LPUSH', stable_key, unpack(stable))
  rcall('HINCRBY', routed_key, 'stable', #stable)
end
if #canary > 0 then
  rcall('LPUSH', canary_key, unpack(canary))
  rcall('HINCRBY', routed_key, 'canary', #canary)
end
local lanes_text = table.concat(lanes)
if idem_key then rcall('SET', idem_key, lanes_text, 'PX', ttl) end
return {lanes_text, first_weight or queue_weight, cfg[4] or '', 0}
