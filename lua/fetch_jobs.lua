--[[
  fetch_jobs: reliable batch fetch. Moves up to ARGV[1] jobs from a lane into the worker's
  processing list, oldest first, unless the worker's version has been rolled back, and records
  the list in the queue's processing index so that the reaper finds it even if the worker's
  registry entry is lost, with the worker's version, so that the jobs it had started are
  counted as crashed attempts of that version even then.

  KEYS[1] lane           list  the lane to take from (jobs are taken from the right)
  KEYS[2] processing     list  this worker's in-flight jobs of the queue
  KEYS[3] rolled_back    set   versions rolled back on this queue
  KEYS[4] index          hash  worker id -> "<lane> <version>", every processing list

  ARGV[1] max            jobs to move at most (1..1000)
  ARGV[2] version        the worker's version
  ARGV[3] worker_id
  ARGV[4] lane           'stable' | 'canary': the lane KEYS[1] is

  Returns {envelopes, bad}: the envelopes moved (oldest first), and the hex of those moved
  that are not valid UTF-8 (they stay in the processing list; the worker dead-letters them)
  Errors  -5 the version is rolled back: take nothing; -4 a bad argument; WRONGTYPE error
          reply if a key has the wrong type (nothing moved)
]]
local rcall = redis.call
local lane_key, processing_key, rolled_back_key, index_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include worker_guard

local max = as_uint(ARGV[1], 1000)
if not max or max < 1 or (ARGV[2] or '') == '' or (ARGV[3] or '') == '' or
    not is_lane(ARGV[4]) then
  return -4
end
local bad_type = check_types({{lane_key, 'list'}, {processing_key, 'list'},
                              {rolled_back_key, 'set'}, {index_key, 'hash'}})
if bad_type then return bad_type end
if rcall('SISMEMBER', rolled_back_key, ARGV[2]) == 1 then return -5 end
local out, bad = {}, {}
for _ = 1, max do
  local job = rcall('LMOVE', lane_key, processing_key, 'RIGHT', 'LEFT')
  if not job then break end
  if valid_utf8(job) then out[#out + 1] = job else bad[#bad + 1] = to_hex(job) end
end
local entry = ARGV[4] .. ' ' .. ARGV[2]
if (#out > 0 or #bad > 0) and rcall('HGET', index_key, ARGV[3]) ~= entry then
  rcall('HSET', index_key, ARGV[3], entry)
end
return {out, bad}
