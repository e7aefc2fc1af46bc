-- Guards shared by the scripts: guard_core (guard_fail, bad_key_type, int_arg, stored_int_ok,
-- checked_call) and the argument and fence checks of the config and deployment scripts.
-- @include guard_core

-- ARGV from index i: n, then n field/value pairs, all present. Returns the index after them,
-- or nil when n is not a count or the pairs run past the end of ARGV (limit = last usable index).
local function pairs_end(args, i, limit)
  local n = int_arg(args[i], 0)
  if n == nil or i + 2 * n > limit then return nil end
  return i + 1 + 2 * n
end

-- Tenant pairs (tenant, weight) from index i: every weight an integer 0..10000.
local function tenant_pairs_ok(args, i)
  local n = tonumber(args[i])
  for j = i + 2, i + 2 * n, 2 do
    if int_arg(args[j], 0, 10000) == nil or args[j - 1] == '' then return false end
  end
  return true
end

-- The fence's epoch without writing: ok, and whether the fence must be raised to epoch.
local function fence_peek(fence_key, epoch)
  if epoch == nil or epoch == '' then return true, false end
  local e = tonumber(epoch)
  local cur = tonumber(rcall('GET', fence_key) or '0') or 0
  if e == nil or e < cur then return false, false end
  return true, e > cur
end

-- The epoch argument (ARGV[1]) and the stored fence of a fenced deployment script, checked
-- before any write. Returns an error reply, or nil.
local function fence_args_error(fence_key, epoch)
  if epoch ~= '' and int_arg(epoch, 0) == nil then return guard_fail(-4, 'ARGV[1] epoch must be an integer or empty') end
  if not stored_int_ok(rcall('GET', fence_key)) then return guard_fail(-4, 'the stored fence is not an integer') end
  return nil
end

-- The fence checked without writing it: nil if the epoch is older than the queue's (fenced),
-- else a function that raises the fence, called once the script writes.
local function fence_gate(fence_key, epoch)
  local fine, up = fence_peek(fence_key, epoch)
  if not fine then return nil end
  return function()
    if up then rcall('SET', fence_key, tonumber(epoch)) end
  end
end
