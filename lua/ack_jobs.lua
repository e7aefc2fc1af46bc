--[[
  ack_jobs: acknowledge a batch of successful jobs of one worker, queue, version and lane, and
  record their outcome and latencies in the same atomic step.

  KEYS[1] processing     list  the worker's in-flight jobs of the queue
  KEYS[2] metrics        hash  metrics slot of (version, lane, slot)
  KEYS[3] totals         hash  running totals of (version, lane)
  KEYS[4] running        hash  envelope -> "<first> <unit>" of the jobs the worker started
                               (what the reaper counts as crashed); the ack removes the entry

  ARGV[1] ttl            seconds to keep the metrics slot (and idle totals)
  ARGV[2 + 6*(i-1) ..]   per job i: envelope (as fetched), run bucket, wait bucket,
                         cpu bucket ('' = not measured), first ('1' = the job's first attempt,
                         else '0'), unit ('' or "<stratum>|<cluster>", see docs/keys.md)

  Counts: ok, first_attempts (slot and totals); r<b>, c<b> (totals: the fine bucket; slot:
  one per pair, see count_pair); w<b> (totals: the fine bucket; slot: a coarse one, see
  count_wait); n1|<unit> (totals only).
  Returns {acked, late}: late counts jobs no longer in the processing list (a reaper returned
  them to a lane, or this ack was already applied before a lost reply). A late job is counted
  only as field `late`, never as `ok`, first_attempts or in the histograms: its other run (or
  the ack that did land) is the one counted, so an outcome is never counted twice.
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local processing_key, metrics_key, total_key, running_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include metrics
-- @include worker_guard

local ttl = as_uint(ARGV[1])
if not ttl or ttl < 1 or (#ARGV - 1) % 6 ~= 0 or not running_key then return -4 end
for i = 2, #ARGV, 6 do
  if not is_int(ARGV[i + 1]) or not is_int(ARGV[i + 2]) or
      not job_fields_ok(ARGV[i + 4], ARGV[i + 5], ARGV[i + 3]) then
    return -4
  end
end
local bad_type = check_types({{processing_key, 'list'}, {metrics_key, 'hash'},
                              {total_key, 'hash'}, {running_key, 'hash'}})
if bad_type then return bad_type end

local m, u, sw, acked, late = {}, {}, {}, 0, 0
for i = 2, #ARGV, 6 do
  if rcall('LREM', processing_key, -1, ARGV[i]) == 0 then
    late = late + 1
  else
    acked = acked + 1
    rcall('HDEL', running_key, ARGV[i])
    count_pair(u, sw, 'r', ARGV[i + 1])
    count_wait(u, sw, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then count_pair(u, sw, 'c', ARGV[i + 3]) end
    count_first(m, u, ARGV[i + 4], ARGV[i + 5], false)
  end
end
if acked > 0 then bump(m, 'ok', acked) end
if late > 0 then bump(m, 'late', late) end
flush_metrics(metrics_key, total_key, m, ttl, u, sw)
return {acked, late}
