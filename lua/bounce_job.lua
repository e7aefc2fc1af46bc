--[[
  bounce_job: a worker that does not accept a job's payload schema puts it back at the tail of
  its lane for another worker (never failed). A job of a closed canary lane (no canary version
  and weight 0: rolled back or promoted) goes to the head of the stable lane instead, since
  nobody reads the canary lane then.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] lane           list  the lane it came from
  KEYS[3] lane_stable    list  where it goes when KEYS[2] is a closed canary lane
  KEYS[4] config         hash  queue config (is the canary lane open?)

  ARGV[1] envelope       as fetched

  Returns 1 if bounced to its lane, 2 if moved to the stable lane (canary lane closed), 0 if
          it was no longer held (a reaper returned it already)
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
local closed = lane_key ~= stable_key and not canary_open(config_key)
if rcall('LREM', processing_key, -1, ARGV[1]) == 0 then return 0 end
if closed then
  rcall('RPUSH', stable_key, ARGV[1])
  return 2
end
rcall('LPUSH', lane_key, ARGV[1])
return 1
