--[[
  fail_jobs: record a batch of failed attempts of one worker, queue, version and lane: each is
  scheduled for a retry (delayed set of its lane) or dead-lettered, and counted, atomically.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] metrics        hash  metrics slot of (version, lane, slot)
  KEYS[3] delayed        zset  retries of this lane, scored by due time (ms)
  KEYS[4] dlq            list  dead letters of the queue (newest at the left)
  KEYS[5] totals         hash  running totals of (version, lane)
  KEYS[6] running        hash  envelope -> "<first> <unit>" of started jobs (entry removed)

  ARGV[1] ttl            seconds to keep the metrics slot
  ARGV[2 + 9*(i-1) ..]   per job i: envelope (as fetched), outcome ('retry' | 'dead'),
                         next (retry: envelope of the next attempt; dead: dead-letter record),
                         due_ms (retry) or '', run bucket, wait bucket, cpu bucket ('' = not
                         measured), first ('1' | '0'), unit ('' or "<stratum>|<cluster>")

  Counts: failed, retried, dead, first_attempts, first_failed (slot and totals); r<b>, c<b>
  (totals: the fine bucket; slot: one per pair, see count_pair), w<b> (totals: the fine
  bucket; slot: a coarse one, see count_wait); n1|<unit>, x1|<unit> (totals only).
  Returns {failed, late}: a late job is no longer in the processing list (a reaper returned it
  to a lane, or this call was already applied before a lost reply), so it is neither retried
  nor dead-lettered here and is counted only as field `late`
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type. Both come
          before any write: the jobs stay in the processing list, nothing is lost.
]]
local rcall = redis.call
local processing_key, metrics_key, delayed_key, dlq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local total_key, running_key = KEYS[5], KEYS[6]

-- @include metrics
-- @include worker_guard

local ttl = as_uint(ARGV[1])
if not ttl or ttl < 1 or (#ARGV - 1) % 9 ~= 0 or not running_key then return -4 end
for i = 2, #ARGV, 9 do
  local outcome = ARGV[i + 1]
  if ARGV[i + 2] == '' or not is_int(ARGV[i + 4]) or
      not is_int(ARGV[i + 5]) or not job_fields_ok(ARGV[i + 7], ARGV[i + 8], ARGV[i + 6]) then
    return -4
  end
  if outcome == 'retry' then
    if not is_int(ARGV[i + 3]) then return -4 end
  elseif outcome ~= 'dead' then
    return -4
  end
end
local bad_type = check_types({{processing_key, 'list'}, {metrics_key, 'hash'},
                              {delayed_key, 'zset'}, {dlq_key, 'list'}, {total_key, 'hash'},
                              {running_key, 'hash'}})
if bad_type then return bad_type end

local m, u, sw, failed, late = {}, {}, {}, 0, 0
for i = 2, #ARGV, 9 do
  if rcall('LREM', processing_key, -1, ARGV[i]) == 0 then
    late = late + 1
  else
    failed = failed + 1
    rcall('HDEL', running_key, ARGV[i])
    count_pair(u, sw, 'r', ARGV[i + 4])
    count_wait(u, sw, ARGV[i + 5])
    if ARGV[i + 6] ~= '' then count_pair(u, sw, 'c', ARGV[i + 6]) end
    count_first(m, u, ARGV[i + 7], ARGV[i + 8], true)
    if ARGV[i + 1] == 'retry' then
      rcall('ZADD', delayed_key, tonumber(ARGV[i + 3]), ARGV[i + 2])
      bump(m, 'retried', 1)
    else
      rcall('LPUSH', dlq_key, ARGV[i + 2])
      bump(m, 'dead', 1)
    end
  end
end
if failed > 0 then bump(m, 'failed', failed) end
if late > 0 then bump(m, 'late', late) end
flush_metrics(metrics_key, total_key, m, ttl, u, sw)
return {failed, late}
