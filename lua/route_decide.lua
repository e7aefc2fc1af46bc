--[[
  route_decide: pick the lane of one job and count it, without pushing anything. For the
  integrations (pycanary/integrations/), whose broker client publishes the message itself (a
  Celery task through kombu, an RQ job): the lane follows the routing contract of
  route_enqueue (docs/design.md section 2), and `routed` counts it the same way, so the
  controller's sample-ratio check sees these queues like any other. The weight is read inside
  the script, so a rollback (weight 0) holds for the very next decision.

  KEYS[1] config         hash  queue routing config (enabled, weight_bp, sticky, salt)
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides
  KEYS[3] routed         hash  jobs routed per lane ("stable", "canary")

  ARGV[1] sticky_key     key hashed in sticky mode (the task id or a chosen argument)
  ARGV[2] tenant         tenant label or ''
  ARGV[3] draw           0..9999, the client's random draw, used in random mode

  Returns {lane, weight_bp in force, salt in force, bucket or draw compared (-1 at weight 0)}
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local config_key, tenant_key, routed_key = KEYS[1], KEYS[2], KEYS[3]

-- @include fnv1a
-- @include routing
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}, {3, 'hash'}})
if bad then return guard_fail(-13, bad) end
if #ARGV ~= 3 then return guard_fail(-4, 'expected 3 ARGV') end
if int_arg(ARGV[3], 0, 9999) == nil then return guard_fail(-4, 'ARGV[3] draw must be 0..9999') end

local cfg = rcall('HMGET', config_key, 'enabled', 'weight_bp', 'sticky', 'salt')
if not stored_int_ok(cfg[2]) then return guard_fail(-4, 'config weight_bp is not an integer') end
local weight = effective_weight(cfg, tenant_key, ARGV[2])
if weight == nil then return guard_fail(-4, 'tenant weight is not an integer') end
local lane, n = decide_lane(cfg, weight, ARGV[1], ARGV[3], '', '')

rcall('HINCRBY', routed_key, lane, 1)
return {lane, weight, cfg[4] or '', n}
