--[[
  requeue_jobs: return a dead worker's in-flight jobs to the head of the lane they came from
  (to stable when the canary lane is closed), oldest at the very head, so they run next.
  Bounded per call; the reaper repeats it until the processing list is empty.

  KEYS[1] processing     list  the dead worker's in-flight jobs of the queue
  KEYS[2] lane_stable    list
  KEYS[3] lane_canary    list
  KEYS[4] config         hash  queue config (is the canary lane open?)

  ARGV[1] lane           'stable' | 'canary': the lane the worker consumed
  ARGV[2] max            jobs to move at most

  Returns {moved, remaining, target lane}
]]
local rcall = redis.call
local processing_key, lane_stable, lane_canary, config_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include lanes

local target, target_name = lane_stable, 'stable'
if ARGV[1] == 'canary' and canary_open(config_key) then
  target, target_name = lane_canary, 'canary'
end
-- The processing list holds the newest fetch at the left: moving from the left to the right
-- end of the lane leaves the oldest job rightmost, first to be taken.
local moved = 0
for _ = 1, tonumber(ARGV[2]) do
  if not rcall('LMOVE', processing_key, target, 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
return {moved, rcall('LLEN', processing_key), target_name}
