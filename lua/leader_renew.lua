--[[
  leader_renew: extend the leader's lease, only if the lease still holds this leadership's
  value (compare-and-expire). A leader whose lease lapsed, even if nobody took over yet, gets 0
  and must acquire again (with a new epoch).

  KEYS[1] leader         string  "epoch:token" of the leader, with a lease (PX)

  ARGV[1] value          the "epoch:token" this leader set
  ARGV[2] lease_ms       lease in milliseconds (positive integer)

  Returns 1 if renewed, 0 if the lease is not ours (or gone)
  Errors  -4 invalid argument; as an error reply before any write: -13 the key is not a string
]]
local rcall = redis.call
local leader_key = KEYS[1]
local value, lease_ms = ARGV[1], tonumber(ARGV[2])

-- @include guard

local bad = bad_key_type({{1, 'string'}})
if bad then return guard_fail(-13, bad) end

if lease_ms == nil or lease_ms < 1 or lease_ms % 1 ~= 0 then return -4 end

if rcall('GET', leader_key) == value then
  rcall('PEXPIRE', leader_key, lease_ms)
  return 1
end
return 0
