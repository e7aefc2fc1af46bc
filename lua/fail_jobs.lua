--[[
  fail_jobs: record a batch of failed attempts of one worker, queue, version and lane: each is
  scheduled for a retry (delayed set of its lane) or dead-lettered, and counted, atomically.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] metrics        hash  metrics slot of (version, lane, slot)
  KEYS[3] delayed        zset  retries of this lane, scored by due time (ms)
  KEYS[4] dlq            list  dead letters of the queue (newest at the left)
  KEYS[5] totals         hash  running totals of (version, lane)

  ARGV[1] ttl            seconds to keep the metrics slot
  ARGV[2 + 6*(i-1) ..]   per job i: envelope (as fetched), outcome ('retry' | 'dead'),
                         next (retry: envelope of the next attempt; dead: dead-letter record),
                         due_ms (retry) or '', run bucket, wait bucket

  Returns {failed, late}: a late job was already returned to a lane by a reaper, so it is
  neither retried nor dead-lettered here (it will run again)
]]
local rcall = redis.call
local processing_key, metrics_key, delayed_key, dlq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local total_key = KEYS[5]

-- @include metrics

local m, failed, late = {}, 0, 0
for i = 2, #ARGV, 6 do
  failed = failed + 1
  bump(m, 'r' .. ARGV[i + 4], 1)
  bump(m, 'w' .. ARGV[i + 5], 1)
  if rcall('LREM', processing_key, -1, ARGV[i]) == 0 then
    late = late + 1
  elseif ARGV[i + 1] == 'retry' then
    rcall('ZADD', delayed_key, tonumber(ARGV[i + 3]), ARGV[i + 2])
    bump(m, 'retried', 1)
  else
    rcall('LPUSH', dlq_key, ARGV[i + 2])
    bump(m, 'dead', 1)
  end
end
bump(m, 'failed', failed)
if late > 0 then bump(m, 'late', late) end
flush_metrics(metrics_key, total_key, m, tonumber(ARGV[1]))
return {failed, late}
