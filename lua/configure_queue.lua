--[[
  configure_queue: set fields of a queue's config in one step. Every field is checked before
  anything is written, so a refused call leaves the config as it was.

  KEYS[1] config         hash  queue routing config
  KEYS[2] tenant_weights hash  tenant -> weight_bp overrides

  ARGV[1] now_ms         client clock, stored as updated_at
  ARGV[2..] field, value pairs; fields: max_weight_bp, stable_version, canary_version, backend,
                         sticky, salt, enabled, max_backlog (jobs per lane, 0..1000000000,
                         0 = no limit; read by route_enqueue*)

  Returns rev (the config's revision after the change)
  Errors  -1 invalid weight (max_weight_bp), -3 max_weight below a weight in force,
          -4 invalid argument (unknown field or bad value); as error replies before any write:
          -13 a key has the wrong type, -4 now_ms or the pairs malformed, a stored weight garbled
]]
local rcall = redis.call
local config_key, tenant_key = KEYS[1], KEYS[2]

-- @include validate
-- @include guard

local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}})
if bad then return guard_fail(-13, bad) end
if int_arg(ARGV[1], 0) == nil then return guard_fail(-4, 'ARGV[1] now_ms must be an integer') end
if #ARGV < 3 or #ARGV % 2 ~= 1 then return guard_fail(-4, 'expected now_ms then field, value pairs') end
if not stored_int_ok(rcall('HGET', config_key, 'weight_bp')) then
  return guard_fail(-4, 'config weight_bp is not an integer')
end

local allowed = {
  max_weight_bp = true, stable_version = true, canary_version = true, backend = true,
  sticky = true, salt = true, enabled = true, max_backlog = true,
}
local writes = {}
for i = 2, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if not allowed[field] or value == nil then return -4 end
  if field == 'max_weight_bp' then
    local m = as_weight(value)
    if m == nil then return -1 end
    if m < tonumber(rcall('HGET', config_key, 'weight_bp') or '0') then return -3 end
    local tenants = rcall('HGETALL', tenant_key)
    for j = 2, #tenants, 2 do
      local tw = tonumber(tenants[j])
      if tw == nil then return guard_fail(-4, 'tenant ' .. tenants[j - 1] .. ': weight garbled') end
      if m < tw then return -3 end
    end
  elseif field == 'sticky' or field == 'enabled' then
    if value ~= '0' and value ~= '1' then return -4 end
  elseif field == 'backend' then
    if value ~= 'lists' and value ~= 'streams' then return -4 end
  elseif field == 'max_backlog' then
    if int_arg(value, 0, 1000000000) == nil then return -4 end
  end
  writes[#writes + 1] = field
  writes[#writes + 1] = value
end
writes[#writes + 1] = 'updated_at'
writes[#writes + 1] = ARGV[1]
rcall('HSET', config_key, unpack(writes))
return rcall('HINCRBY', config_key, 'rev', 1)
