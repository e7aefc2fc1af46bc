--[[
  release_lock: delete a lock only if it still holds our token (compare-and-delete), so a
  holder whose lock expired cannot release someone else's.

  KEYS[1] lock           string  the lock key

  ARGV[1] token          the token this holder set

  Returns 1 if released, 0 if the lock was not ours (or gone)
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local lock_key = KEYS[1]

-- @include guard

local bad = bad_key_type({{1, 'string'}})
if bad then return guard_fail(-13, bad) end
if ARGV[1] == nil or ARGV[1] == '' then return guard_fail(-4, 'ARGV[1] token is empty') end

if rcall('GET', lock_key) == ARGV[1] then
  return rcall('DEL', lock_key)
end
return 0
