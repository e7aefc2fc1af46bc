--[[
  route_xadd: the Streams backend's route_enqueue. Picks the lane of one job with the same
  routing contract (config, tenant weights, FNV bucket or draw: lua/includes/routing.lua),
  XADDs it to that lane's stream and counts it, in one atomic step: a weight change and an
  enqueue never interleave, and weight 0 holds for the very next job.

  KEYS[1] config         hash    queue routing config (enabled, weight_bp, sticky, salt, ...)
  KEYS[2] tenant_weights hash    tenant -> weight_bp overrides
  KEYS[3] stream_stable  stream  stable lane (entry field e = the envelope)
  KEYS[4] stream_canary  stream  canary lane
  KEYS[5] routed         hash    jobs routed per lane ("stable", "canary")
  KEYS[6] idem           string  optional: idempotency record of this job id (lane it took)

  ARGV[1] envelope       the job envelope (JSON, opaque to this script)
  ARGV[2] sticky_key     key hashed in sticky mode
  ARGV[3] tenant         tenant label or ''
  ARGV[4] draw           0..9999, the client's random draw, used in random mode
  ARGV[5] client_bucket  bucket precomputed by the client, or '' to compute it here
  ARGV[6] client_salt    salt the client used for ARGV[5]
  ARGV[7] group          the lanes' consumer group (keys.STREAM_GROUP), created if missing
  ARGV[8] idem_ttl_ms    with KEYS[6]: how long the record is kept (1..86400000)

  Returns {lane, weight_bp in force, salt in force, bucket or draw compared (-1 at weight 0),
           1 if KEYS[6] showed the job already landed (nothing added) else 0, entry id or ''}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument, -14 the job's lane stream holds max_backlog entries
          (waiting or running; config field, 0 or unset = no limit)
]]
local rcall = redis.call
-- @include fnv1a
-- @include routing
-- @include guard
-- @include streams

local config_key, tenant_key = KEYS[1], KEYS[2]
local stable_key, canary_key, routed_key, idem_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'stream'}, {4, 'stream'}, {5, 'hash'}})
if bad == nil and idem_key then bad = bad_key_type({{6, 'string'}}) end
if bad then return guard_fail(-13, bad) end
if #ARGV ~= (idem_key and 8 or 7) then return guard_fail(-4, 'expected 7 ARGV (8 with KEYS[6])') end
local ttl
if idem_key then
  ttl = int_arg(ARGV[8], 1, 86400000)
  if ttl == nil then return guard_fail(-4, 'ARGV[8] idem_ttl_ms must be 1..86400000') end
end
if ARGV[1] == '' then return guard_fail(-4, 'ARGV[1] envelope is empty') end
if int_arg(ARGV[4], 0, 9999) == nil then return guard_fail(-4, 'ARGV[4] draw must be 0..9999') end
if ARGV[5] ~= '' and int_arg(ARGV[5], 0, 9999) == nil then
  return guard_fail(-4, 'ARGV[5] client_bucket must be 0..9999 or empty')
end
if not name_ok(ARGV[7]) then return guard_fail(-4, 'ARGV[7] group must be a name') end

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt', 'max_backlog')
if not stored_int_ok(cfg[2]) then return guard_fail(-4, 'config weight_bp is not an integer') end
if not stored_int_ok(cfg[5]) then return guard_fail(-4, 'config max_backlog is not an integer') end
local weight = effective_weight(cfg, tenant_key, ARGV[3])
if weight == nil then return guard_fail(-4, 'tenant weight is not an integer') end
if idem_key then
  local first = rcall('GET', idem_key)
  if first then return {first, weight, cfg[4] or '', -1, 1, ''} end
end
local lane, n = decide_lane(cfg, weight, ARGV[2], ARGV[4], ARGV[5], ARGV[6])
local lane_key = lane == 'canary' and canary_key or stable_key
local limit = tonumber(cfg[5] or '0') or 0
if limit > 0 then
  local held = rcall('XLEN', lane_key)
  if held + 1 > limit then
    local queue = string.match(config_key, '{(.-)}') or config_key
    return guard_fail(-14, 'queue ' .. queue .. ': the ' .. lane .. ' lane holds ' .. held ..
      ' jobs, max_backlog is ' .. limit .. '; 1 more refused, nothing enqueued')
  end
end

ensure_stream(lane_key, ARGV[7])
local id = rcall('XADD', lane_key, '*', 'e', ARGV[1])
rcall('HINCRBY', routed_key, lane, 1)
if idem_key then rcall('SET', idem_key, lane, 'PX', ttl) end
return {lane, weight, cfg[4] or '', n, 0, id}
