--[[
  return_job: a stopping worker gives back a job it fetched but never started, to the head of
  its lane, so it runs next.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] lane           list  the lane it came from

  ARGV[1] envelope       as fetched

  Returns 1 if returned, 0 if it was no longer held
]]
local rcall = redis.call
local processing_key, lane_key = KEYS[1], KEYS[2]

if rcall('LREM', processing_key, -1, ARGV[1]) == 0 then return 0 end
rcall('RPUSH', lane_key, ARGV[1])
return 1
