--[[
  route_enqueue: pick the lane of one job, push it, count it. One atomic step, so a weight change
  and an enqueue never interleave (DESIGN.md section 2).

  KEYS[1] config         hash  queue routing config (enabled, weight_bp, sticky, salt, ...)
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] lane_stable    list  stable lane (LPUSH here, workers pop from the right)
  KEYS[4] lane_canary    list  canary lane
  KEYS[5] routed         hash  jobs routed per lane ("stable", "canary")
  KEYS[6] idem           string  optional: idempotency record of this job id (lane it took)

  ARGV[1] envelope       the job envelope (JSON, opaque to this script)
  ARGV[2] sticky_key     key hashed in sticky mode (defaults to the job id client side)
  ARGV[3] tenant         tenant label or ''
  ARGV[4] draw           0..9999, the client's random draw, used in random mode
  ARGV[5] client_bucket  bucket precomputed by the client, or '' to compute it here
  ARGV[6] client_salt    salt the client used for ARGV[5]
  ARGV[7] idem_ttl_ms    with KEYS[6]: how long the record is kept (1..86400000)

  Returns {lane, weight_bp in force, salt in force, bucket or draw compared (-1 at weight 0),
           1 if KEYS[6] showed the job already landed (nothing pushed again) else 0}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument, -14 the job's lane holds max_backlog jobs (config field;
          0 or unset = no limit). A job already landed (KEYS[6]) is answered, never refused.
]]
local rcall = redis.call
-- @include route_prologue

local ttl, refused = route_prologue(7)
if refused then return refused end
if #ARGV ~= (idem_key and 7 or 6) then return guard_fail(-4, 'expected 6 ARGV (7 with KEYS[6])') end
if ARGV[1] == '' then return guard_fail(-4, 'ARGV[1] envelope is empty') end
if int_arg(ARGV[4], 0, 9999) == nil then return guard_fail(-4, 'ARGV[4] draw must be 0..9999') end
if ARGV[5] ~= '' and int_arg(ARGV[5], 0, 9999) == nil then
  return guard_fail(-4, 'ARGV[5] client_bucket must be 0..9999 or empty')
end

local cfg, garbled = route_config()
if garbled then return garbled end
local weight = effective_weight(cfg, tenant_key, ARGV[3])
if weight == nil then return guard_fail(-4, 'tenant weight is not an integer') end
if idem_key then
  local first = rcall('GET', idem_key)
  if first then return {first, weight, cfg[4] or '', -1, 1} end
end
local lane, n = decide_lane(cfg, weight, ARGV[2], ARGV[4], ARGV[5], ARGV[6])
local lane_key = lane == 'canary' and canary_key or stable_key
local full = backlog_refusal(cfg, lane, lane_key, 1)
if full then return full end

rcall('LPUSH', lane_key, ARGV[1])
rcall('HINCRBY', routed_key, lane, 1)
if idem_key then rcall('SET', idem_key, lane, 'PX', ttl) end
return {lane, weight, cfg[4] or '', n, 0}
