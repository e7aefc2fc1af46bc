--[[
  ack_stream: acknowledge a batch of successful jobs of one worker (consumer), queue, version
  and lane of the Streams backend, and record their outcome and latencies in the same atomic
  step: XACK + XDEL (the stream keeps only unfinished jobs) plus the per-version metrics, as
  ack_jobs does for lists.

  KEYS[1] stream         stream  the lane's stream
  KEYS[2] metrics        hash    metrics slot of (version, lane, slot)
  KEYS[3] totals         hash    running totals of (version, lane)
  KEYS[4] running        hash    entry id -> "<first> <unit>" of started entries of the lane
                                 (what reclaim_stream counts as crashed); the ack removes it

  ARGV[1] ttl            seconds to keep the metrics slot (and idle totals)
  ARGV[2] group          the consumer group
  ARGV[3] consumer       the worker id
  ARGV[4 + 6*(i-1) ..]   per job i: entry id, run bucket, wait bucket, cpu bucket ('' = not
                         measured), first ('1' | '0'), unit ('' or "<stratum>|<cluster>")

  Returns {acked, late}: late counts entries no longer pending on this consumer (reclaimed by
  another worker after this one looked dead, drained, or this ack already applied before a
  lost reply); a late job is counted only as field `late` and is not acked (its holder acks it)
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local stream_key, metrics_key, total_key, running_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- @include metrics
-- @include worker_guard
-- @include streams

local ttl = as_uint(ARGV[1])
if not ttl or ttl < 1 or (#ARGV - 3) % 6 ~= 0 or #ARGV < 9 or not name_ok(ARGV[2]) or
    not name_ok(ARGV[3]) or not running_key then
  return -4
end
for i = 4, #ARGV, 6 do
  if not stream_id_ok(ARGV[i]) or not is_int(ARGV[i + 1]) or not is_int(ARGV[i + 2]) or
      not job_fields_ok(ARGV[i + 4], ARGV[i + 5], ARGV[i + 3]) then
    return -4
  end
end
local bad_type = check_types({{stream_key, 'stream'}, {metrics_key, 'hash'},
                              {total_key, 'hash'}, {running_key, 'hash'}})
if bad_type then return bad_type end
local group, consumer = ARGV[2], ARGV[3]
local exists = rcall('EXISTS', stream_key) == 1

local m, u, sw, acked, late = {}, {}, {}, 0, 0
for i = 4, #ARGV, 6 do
  if not exists or pending_owner(stream_key, group, ARGV[i]) ~= consumer then
    late = late + 1
  else
    acked = acked + 1
    rcall('XACK', stream_key, group, ARGV[i])
    rcall('XDEL', stream_key, ARGV[i])
    rcall('HDEL', running_key, ARGV[i])
    bump(m, 'r' .. ARGV[i + 1], 1)
    count_wait(u, sw, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then bump(m, 'c' .. ARGV[i + 3], 1) end
    count_first(m, u, ARGV[i + 4], ARGV[i + 5], false)
  end
end
if acked > 0 then bump(m, 'ok', acked) end
if late > 0 then bump(m, 'late', late) end
flush_metrics(metrics_key, total_key, m, ttl, u, sw)
return {acked, late}
