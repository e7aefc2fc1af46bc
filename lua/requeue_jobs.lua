--[[
  requeue_jobs: return a dead (or vanished) worker's in-flight jobs to the head of the lane
  they came from (to stable when the canary lane is closed), oldest at the very head, so they
  run next. Bounded per call; the reaper repeats it until the processing list is empty, and
  the call that empties it drops the list from the queue's processing index.

  KEYS[1] processing     list  the dead worker's in-flight jobs of the queue
  KEYS[2] lane_stable    list
  KEYS[3] lane_canary    list
  KEYS[4] config         hash  queue config (is the canary lane open?)
  KEYS[5] index          hash  worker id -> lane, every processing list of the queue

  ARGV[1] lane           'stable' | 'canary': the lane the worker consumed
  ARGV[2] max            jobs to move at most (1..10000)
  ARGV[3] worker_id      whose list it is (its index entry is dropped once the list is empty)

  Returns {moved, remaining, target lane}
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local processing_key, lane_stable, lane_canary, config_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local index_key = KEYS[5]

-- @include lanes
-- @include worker_guard

local max = as_uint(ARGV[2], 10000)
if not is_lane(ARGV[1]) or not max or max < 1 or (ARGV[3] or '') == '' then return -4 end
local bad_type = check_types({{processing_key, 'list'}, {lane_stable, 'list'},
                              {lane_canary, 'list'}, {config_key, 'hash'},
                              {index_key, 'hash'}})
if bad_type then return bad_type end

local target, target_name = lane_stable, 'stable'
if ARGV[1] == 'canary' and canary_open(config_key) then
  target, target_name = lane_canary, 'canary'
end
-- The processing list holds the newest fetch at the left: moving from the left to the right
-- end of the lane leaves the oldest job rightmost, first to be taken.
local moved = 0
for _ = 1, max do
  if not rcall('LMOVE', processing_key, target, 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
local remaining = rcall('LLEN', processing_key)
if remaining == 0 and rcall('HEXISTS', index_key, ARGV[3]) == 1 then
  rcall('HDEL', index_key, ARGV[3])
end
return {moved, remaining, target_name}
