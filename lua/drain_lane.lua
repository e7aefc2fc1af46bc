--[[
  drain_lane: move up to ARGV[1] jobs of one lane to the head of another (the right end, taken
  next), in their order: the oldest drained job is taken first, every drained job before the
  jobs already waiting in the target lane. Bounded per call so no call blocks the server for
  long; the client (pycanary/drain.py) repeats it until nothing remains. Used after a rollback
  or a promotion closed the canary lane.

  Why the left end of one to the right end of the other: lanes hold the newest job at the left
  and are taken from the right. Each call takes the from-lane's NEWEST remaining jobs and appends
  them to the target's right end in from-lane order, so the oldest of them ends up rightmost.
  The next call takes older jobs still and appends them further right, in front of the previous
  batch: after the last call the from-lane is reproduced, whole and in order, at the right end
  of the target lane. (Taking the oldest from the right instead would reverse each batch, or
  put every later batch before the earlier ones.) This is exactly LMOVE from LEFT to RIGHT
  repeated `max` times; one LPOP with a count and RPUSHes of what it returned do the same moves
  at a third of the server time. A worker taking from the target lane between two calls takes
  the batch just moved before the older jobs of the next call: the order holds within a call,
  and across calls for every job still waiting when the drain ends.

  KEYS[1] from_lane      list  the lane to empty (e.g. lane_canary)
  KEYS[2] to_lane        list  the lane that receives the jobs (e.g. lane_stable)

  ARGV[1] max            jobs to move at most (1..5000)

  Returns {moved, remaining}: remaining = jobs left in the from-lane after this call
  Errors  -4 max is not an integer 1..5000, or both keys are the same list; as an error reply
          before any write: -13 a key is not a list
]]
local rcall = redis.call
local from_lane, to_lane = KEYS[1], KEYS[2]
local max = tonumber(ARGV[1])

-- @include guard

local bad = bad_key_type({{1, 'list'}, {2, 'list'}})
if bad then return guard_fail(-13, bad) end

if max == nil or max < 1 or max > 5000 or max % 1 ~= 0 or from_lane == to_lane then
  return -4
end

-- newest first, i.e. in the order repeated LMOVE LEFT RIGHT would move them
local jobs = rcall('LPOP', from_lane, max)
if not jobs then return {0, 0} end
local chunk = 1000 -- unpack() of a whole batch could exceed the Lua stack
for i = 1, #jobs, chunk do
  rcall('RPUSH', to_lane, unpack(jobs, i, math.min(i + chunk - 1, #jobs)))
end
return {#jobs, rcall('LLEN', from_lane)}
