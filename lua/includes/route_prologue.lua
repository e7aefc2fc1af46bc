-- route_enqueue_many's opening (route_core plus the full guard): every key's type and the
-- optional idempotency record's TTL checked before any write. A batch pays these TYPE calls
-- once per up to 1000 jobs; route_enqueue checks types through its reads and writes instead.
-- The caller defines `rcall` first.
-- @include route_core
-- @include guard

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
