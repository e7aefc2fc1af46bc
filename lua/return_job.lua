--[[
  return_job: a stopping worker gives back a job it fetched but never started, to the head of
  its lane, so it runs next.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] lane           list  the lane it came from

  ARGV[1] envelope       as fetched

  Returns 1 if returned, 0 if it was no longer held
  Errors  -4 no envelope (an empty string is a valid list entry); WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local processing_key, lane_key = KEYS[1], KEYS[2]

-- @include worker_guard

if ARGV[1] == nil then return -4 end
local bad_type = check_types({{processing_key, 'list'}, {lane_key, 'list'}})
if bad_type then return bad_type end
if rcall('LREM', processing_key, -1, ARGV[1]) == 0 then return 0 end
rcall('RPUSH', lane_key, ARGV[1])
return 1
