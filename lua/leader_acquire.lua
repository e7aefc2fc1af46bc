--[[
  leader_acquire: become the controller leader if nobody holds the lease. A new leadership takes
  the next epoch (INCR), which is the fencing token its writes carry (DESIGN.md invariant 4).
  Acquiring again with the token that already holds the lease (a retry whose reply was lost)
  keeps the epoch and refreshes the lease instead of taking a new one.

  A new leadership also records when it began, "epoch:acquired_ms", so that /metrics and
  /healthz can tell the leader's age. The time is the caller's clock (scripts read no clock);
  the record has no expiry and is trusted by readers only while its epoch is the lease's.

  KEYS[1] leader         string  "epoch:token" of the leader, with a lease (PX)
  KEYS[2] epoch          string  counter of leaderships
  KEYS[3] leader_since   string  "epoch:acquired_ms" of the latest leadership

  ARGV[1] token          this contender's unique token
  ARGV[2] lease_ms       lease in milliseconds (positive integer)
  ARGV[3] now_ms         the caller's wall clock, Unix milliseconds (non-negative integer)

  Returns {epoch, "epoch:token"} when this token leads, {0, holder's "epoch:token"} when
  another one does
  Errors  -4 invalid argument; as error replies before any write: -13 a key is not a string,
          -4 the stored epoch counter is not an integer
]]
local rcall = redis.call
local leader_key, epoch_key, since_key = KEYS[1], KEYS[2], KEYS[3]
local token, lease_ms = ARGV[1], tonumber(ARGV[2])

-- @include guard

local bad = bad_key_type({{1, 'string'}, {2, 'string'}, {3, 'string'}})
if bad then return guard_fail(-13, bad) end
if not stored_int_ok(rcall('GET', epoch_key)) then
  return guard_fail(-4, 'the stored epoch is not an integer')
end

if token == nil or token == '' or lease_ms == nil or lease_ms < 1 or lease_ms % 1 ~= 0 then
  return -4
end
local now_ms = int_arg(ARGV[3], 0)
if now_ms == nil then return -4 end

local holder = rcall('GET', leader_key)
if holder then
  local held_epoch, held_token = string.match(holder, '^(%d+):(.*)$')
  if held_token == token then
    rcall('PEXPIRE', leader_key, lease_ms)
    return {tonumber(held_epoch), holder}
  end
  return {0, holder}
end

local epoch = rcall('INCR', epoch_key)
local value = epoch .. ':' .. token
rcall('SET', leader_key, value, 'PX', lease_ms)
rcall('SET', since_key, epoch .. ':' .. ARGV[3])
return {epoch, value}
