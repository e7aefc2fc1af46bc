--[[
  release_lock: delete a lock only if it still holds our token (compare-and-delete), so a
  holder whose lock expired cannot release someone else's.

  KEYS[1] lock           string  the lock key

  ARGV[1] token          the token this holder set

  Returns 1 if released, 0 if the lock was not ours (or gone)
]]
local rcall = redis.call
local lock_key = KEYS[1]

if rcall('GET', lock_key) == ARGV[1] then
  return rcall('DEL', lock_key)
end
return 0
