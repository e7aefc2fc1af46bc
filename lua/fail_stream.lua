--[[
  fail_stream: record a batch of failed attempts of one worker (consumer), queue, version and
  lane of the Streams backend: each entry is acked and deleted, and in the same step its next
  attempt is scheduled (delayed set of its lane; promote_delayed_stream XADDs it when due, as a
  new entry) or it is dead-lettered, and counted, as fail_jobs does for lists.

  KEYS[1] stream         stream  the lane's stream
  KEYS[2] metrics        hash    metrics slot of (version, lane, slot)
  KEYS[3] delayed        zset    retries of this lane, scored by due time (ms)
  KEYS[4] dlq            list    dead letters of the queue (newest at the left)
  KEYS[5] totals         hash    running totals of (version, lane)
  KEYS[6] running        hash    entry id -> "<first> <unit>" of started entries (removed)

  ARGV[1] ttl            seconds to keep the metrics slot
  ARGV[2] group          the consumer group
  ARGV[3] consumer       the worker id
  ARGV[4 + 9*(i-1) ..]   per job i: entry id, outcome ('retry' | 'dead'), next (retry: envelope
                         of the next attempt; dead: dead-letter record), due_ms (retry) or '',
                         run bucket, wait bucket, cpu bucket ('' = not measured), first
                         ('1' | '0'), unit ('' or "<stratum>|<cluster>")

  Returns {failed, late}: a late entry is no longer pending on this consumer, so it is neither
  retried nor dead-lettered here and is counted only as field `late`
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type. Both come
          before any write: the entries stay pending, nothing is lost.
]]
local rcall = redis.call
local stream_key, metrics_key, delayed_key, dlq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local total_key, running_key = KEYS[5], KEYS[6]

-- @include metrics
-- @include worker_guard
-- @include streams

local ttl = as_uint(ARGV[1])
if not ttl or ttl < 1 or (#ARGV - 3) % 9 ~= 0 or #ARGV < 12 or not name_ok(ARGV[2]) or
    not name_ok(ARGV[3]) or not running_key then
  return -4
end
for i = 4, #ARGV, 9 do
  local outcome = ARGV[i + 1]
  if not stream_id_ok(ARGV[i]) or ARGV[i + 2] == '' or not is_int(ARGV[i + 4]) or
      not is_int(ARGV[i + 5]) or not job_fields_ok(ARGV[i + 7], ARGV[i + 8], ARGV[i + 6]) then
    return -4
  end
  if outcome == 'retry' then
    if not is_int(ARGV[i + 3]) then return -4 end
  elseif outcome ~= 'dead' then
    return -4
  end
end
local bad_type = check_types({{stream_key, 'stream'}, {metrics_key, 'hash'},
                              {delayed_key, 'zset'}, {dlq_key, 'list'}, {total_key, 'hash'},
                              {running_key, 'hash'}})
if bad_type then return bad_type end
local group, consumer = ARGV[2], ARGV[3]
local exists = rcall('EXISTS', stream_key) == 1

local m, u, sw, failed, late = {}, {}, {}, 0, 0
for i = 4, #ARGV, 9 do
  if not exists or pending_owner(stream_key, group, ARGV[i]) ~= consumer then
    late = late + 1
  else
    failed = failed + 1
    rcall('XACK', stream_key, group, ARGV[i])
    rcall('XDEL', stream_key, ARGV[i])
    rcall('HDEL', running_key, ARGV[i])
    bump(m, 'r' .. ARGV[i + 4], 1)
    count_wait(u, sw, ARGV[i + 5])
    if ARGV[i + 6] ~= '' then bump(m, 'c' .. ARGV[i + 6], 1) end
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
