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
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key the call reads or
          writes has the wrong type, -4 a malformed argument, -14 the job's lane holds
          max_backlog jobs (config field; 0 or unset = no limit). A job already landed
          (KEYS[6]) is answered, never refused.

  The hot path (issue 15): arguments are checked first (no Redis call), then each read checks
  its own key's type (a failing HMGET/GET/LLEN is answered -13 naming the key; a tenant's job
  TYPE-checks KEYS[2] before reading its weight), KEYS[5] gets a TYPE call, so that LPUSH +
  HINCRBY land together, and the LPUSH is the first write
  and checks the lane itself (a WRONGTYPE there has written nothing). A key the call does not
  touch (the other lane; tenant_weights without a tenant) is not checked.
]]
local rcall = redis.call
-- @include route_core

if #ARGV ~= (idem_key and 7 or 6) then return guard_fail(-4, 'expected 6 ARGV (7 with KEYS[6])') end
local envelope, sticky_key, tenant, draw = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local client_bucket, client_salt = ARGV[5], ARGV[6]
if envelope == '' then return guard_fail(-4, 'ARGV[1] envelope is empty') end
if int_arg(draw, 0, 9999) == nil then return guard_fail(-4, 'ARGV[4] draw must be 0..9999') end
if client_bucket ~= '' and int_arg(client_bucket, 0, 9999) == nil then
  return guard_fail(-4, 'ARGV[5] client_bucket must be 0..9999 or empty')
end
local ttl
if idem_key then
  ttl = int_arg(ARGV[7], 1, 86400000)
  if ttl == nil then return guard_fail(-4, 'ARGV[7] idem_ttl_ms must be 1..86400000') end
end

local cfg, refused = route_config()
if refused then return refused end
if tenant ~= '' and cfg[1] ~= '0' then -- effective_weight reads the tenant's weight
  local bad = bad_key_type({{2, 'hash'}})
  if bad then return guard_fail(-13, bad) end
end
local weight = effective_weight(cfg, tenant_key, tenant)
if weight == nil then return guard_fail(-4, 'tenant weight is not an integer') end
if idem_key then
  local first, bad = checked_call(6, 'string', 'GET', idem_key)
  if bad then return bad end
  if first then return {first, weight, cfg[4] or '', -1, 1} end
end
local lane, n = decide_lane(cfg, weight, sticky_key, draw, client_bucket, client_salt)
local lane_index = lane == 'canary' and 4 or 3
local lane_key = KEYS[lane_index]
refused = backlog_refusal(cfg, lane, lane_key, 1, lane_index)
if refused then return refused end

local routed_type = rcall('TYPE', routed_key) -- HINCRBY below must not fail
routed_type = type(routed_type) == 'table' and routed_type['ok'] or routed_type
if routed_type ~= 'hash' and routed_type ~= 'none' then
  return guard_fail(-13, bad_key_type({{5, 'hash'}}))
end
local _, bad = checked_call(lane_index, 'list', 'LPUSH', lane_key, envelope) -- the first write
if bad then return bad end
rcall('HINCRBY', routed_key, lane, 1)
if idem_key then rcall('SET', idem_key, lane, 'PX', ttl) end
return {lane, weight, cfg[4] or '', n, 0}
