--[[
  return_job: a worker gives back a job it fetched but never started (it is stopping, or its
  version was rolled back or replaced), to the head of its lane, so it runs next. A job of the
  canary lane goes to the head of the stable lane instead when the canary lane is closed (no
  canary version and weight 0: rolled back or promoted), since nobody reads that lane then.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] lane           list  the lane it came from
  KEYS[3] lane_stable    list  where it goes when KEYS[2] is a closed canary lane
  KEYS[4] config         hash  queue config (is the canary lane open?)

  ARGV[1] envelope       as fetched

  Returns 1 if returned to its lane, 2 if returned to the stable lane (canary lane closed),
          0 if it was no longer held
  Errors  -4 no envelope (an empty string is a valid list entry); WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local processing_key, lane_key, stable_key, config_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include lanes
-- @include worker_guard

if ARGV[1] == nil then return -4 end
local bad_type = check_types({{processing_key, 'list'}, {lane_key, 'list'},
                              {stable_key, 'list'}, {config_key, 'hash'}})
if bad_type then return bad_type end
local target, code = lane_key, 1
if lane_key ~= stable_key and not canary_open(config_key) then target, code = stable_key, 2 end
if rcall('LREM', processing_key, -1, ARGV[1]) == 0 then return 0 end
rcall('RPUSH', target, ARGV[1])
return code
