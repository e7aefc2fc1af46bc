--[[
  reclaim_stream: the Streams backend's reaper. XAUTOCLAIM hands entries pending for at least
  ARGV[3] ms to a live worker (ARGV[2]). Live workers keep their own entries fresh (touch_stream
  each heartbeat), so only entries of consumers that stopped beating (dead, or cut off) get that
  idle. An entry delivered more than ARGV[6] times without an outcome (its workers kept dying on
  it) is dead-lettered instead. Consumers that hold nothing and were idle that long are deleted
  (XGROUP DELCONSUMER): gone workers do not pile up in the group. A claimed entry its dead worker
  had started (marked in KEYS[3]) is counted as a crashed attempt (failed, crashed, and the
  first-attempt fields of the mark) of the claimer's version on this lane, as requeue_jobs does
  for lists, and its mark removed. Bounded per call: the caller repeats it with the returned
  cursor until it is '0-0'.

  KEYS[1] stream         stream  the lane's stream
  KEYS[2] dlq            list    dead letters of the queue
  KEYS[3] running        hash    entry id -> "<first> <unit>" of started entries of the lane
  KEYS[4] metrics        hash    metrics slot of (version, lane, slot)
  KEYS[5] totals         hash    running totals of (version, lane)

  ARGV[1] group          the consumer group
  ARGV[2] claimer        the live worker that takes the entries
  ARGV[3] min_idle_ms    idle time after which a pending entry's consumer counts as dead
  ARGV[4] cursor         XAUTOCLAIM start id ('0-0' to begin)
  ARGV[5] count          entries to claim at most (1..1000)
  ARGV[6] max_deliveries deliveries after which an entry is dead-lettered (1..1000)
  ARGV[7] now_ms         client clock (the dead letter's failed_at)
  ARGV[8] lane           'stable' | 'canary' (in the dead-letter record)
  ARGV[9] ttl            seconds to keep the metrics slot (and idle totals)

  Returns {next_cursor, entries, dead, consumers_deleted, crashed}: entries = flat
          {id1, envelope1, ...} now pending on the claimer (to run again); crashed = started
          attempts counted
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local stream_key, dlq_key, running_key, metrics_key, total_key = KEYS[1], KEYS[2], KEYS[3],
  KEYS[4], KEYS[5]

-- @include metrics
-- @include worker_guard
-- @include streams

local min_idle, count = as_uint(ARGV[3]), as_uint(ARGV[5], 1000)
local max_deliveries, now = as_uint(ARGV[6], 1000), as_uint(ARGV[7])
local ttl = as_uint(ARGV[9])
if not name_ok(ARGV[1]) or not name_ok(ARGV[2]) or not min_idle or min_idle < 1 or
    not stream_id_ok(ARGV[4]) or not count or count < 1 or not max_deliveries or
    max_deliveries < 1 or not now or not is_lane(ARGV[8]) or not ttl or ttl < 1 or
    not total_key then
  return -4
end
local bad_type = check_types({{stream_key, 'stream'}, {dlq_key, 'list'}, {running_key, 'hash'},
                              {metrics_key, 'hash'}, {total_key, 'hash'}})
if bad_type then return bad_type end
if rcall('EXISTS', stream_key) == 0 then return {'0-0', {}, 0, 0, 0} end
ensure_group(stream_key, ARGV[1])
local group, claimer = ARGV[1], ARGV[2]

local res = rcall('XAUTOCLAIM', stream_key, group, claimer, min_idle, ARGV[4], 'COUNT', count)
local out, dead = {}, 0
local m, u, crashed = {}, {}, 0
for _, entry in ipairs(res[2]) do
  local id = entry[1]
  local env = entry_envelope(entry[2])
  local mark = rcall('HGET', running_key, id)
  if mark then -- started by the dead worker: a crashed attempt, counted once
    local first, unit = string.match(mark, '^(%d) ?(.*)$')
    if first and job_fields_ok(first, unit, '') then count_first(m, u, first, unit, true) end
    crashed = crashed + 1
    rcall('HDEL', running_key, id)
  end
  local _, deliveries = pending_owner(stream_key, group, id)
  if env == nil or deliveries > max_deliveries then
    rcall('LPUSH', dlq_key, cjson.encode({
      raw = env or '', entry = id, lane = ARGV[8], failed_at = now, attempts = deliveries,
      error = 'delivered ' .. deliveries .. ' times without an outcome (its workers died)'}))
    rcall('XACK', stream_key, group, id)
    rcall('XDEL', stream_key, id)
    dead = dead + 1
  else
    out[#out + 1] = id
    out[#out + 1] = env
  end
end

local deleted = 0
for _, c in ipairs(rcall('XINFO', 'CONSUMERS', stream_key, group)) do
  local name, pending, idle
  for j = 1, #c, 2 do
    if c[j] == 'name' then name = c[j + 1]
    elseif c[j] == 'pending' then pending = c[j + 1]
    elseif c[j] == 'idle' then idle = c[j + 1] end
  end
  if name ~= claimer and pending == 0 and idle >= min_idle then
    rcall('XGROUP', 'DELCONSUMER', stream_key, group, name)
    deleted = deleted + 1
  end
end
if crashed > 0 then
  bump(m, 'crashed', crashed)
  bump(m, 'failed', crashed)
end
flush_metrics(metrics_key, total_key, m, ttl, u)
return {res[1], out, dead, deleted, crashed}
