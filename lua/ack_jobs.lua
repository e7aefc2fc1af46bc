--[[
  ack_jobs: acknowledge a batch of successful jobs of one worker, queue, version and lane, and
  record their outcome and latencies in the same atomic step.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] metrics        hash  metrics slot of (version, lane, slot)
  KEYS[3] totals         hash  running totals of (version, lane)

  ARGV[1] ttl            seconds to keep the metrics slot (and idle totals)
  ARGV[2 + 3*(i-1) ..]   per job i: envelope (as fetched), run bucket, wait bucket

  Returns {acked, late}: late counts jobs no longer in the processing list (a reaper returned
  them to a lane, so they will run again: a duplicate, counted as field `late`)
]]
local rcall = redis.call
local processing_key, metrics_key, total_key = KEYS[1], KEYS[2], KEYS[3]

-- @include metrics

local m, acked, late = {}, 0, 0
for i = 2, #ARGV, 3 do
  if rcall('LREM', processing_key, -1, ARGV[i]) == 0 then
    late = late + 1
  end
  acked = acked + 1
  bump(m, 'r' .. ARGV[i + 1], 1)
  bump(m, 'w' .. ARGV[i + 2], 1)
end
bump(m, 'ok', acked)
if late > 0 then bump(m, 'late', late) end
flush_metrics(metrics_key, total_key, m, tonumber(ARGV[1]))
return {acked, late}
