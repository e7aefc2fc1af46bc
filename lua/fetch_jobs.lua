--[[
  fetch_jobs: reliable batch fetch. Moves up to ARGV[1] jobs from a lane into the worker's
  processing list, oldest first, unless the worker's version has been rolled back.

  KEYS[1] lane           list  the lane to take from (jobs are taken from the right)
  KEYS[2] processing     list  this worker's in-flight jobs of the queue
  KEYS[3] rolled_back    set   versions rolled back on this queue

  ARGV[1] max            jobs to move at most (bounded by the worker, <= 1000)
  ARGV[2] version        the worker's version

  Returns the envelopes moved (oldest first), possibly empty
  Errors  -5 the version is rolled back: take nothing
]]
local rcall = redis.call
local lane_key, processing_key, rolled_back_key = KEYS[1], KEYS[2], KEYS[3]

if rcall('SISMEMBER', rolled_back_key, ARGV[2]) == 1 then return -5 end
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local job = rcall('LMOVE', lane_key, processing_key, 'RIGHT', 'LEFT')
  if not job then break end
  out[#out + 1] = job
end
return out
