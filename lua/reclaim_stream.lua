--[[
  reclaim_stream: the Streams backend's reaper. XAUTOCLAIM hands entries pending for at least
  ARGV[3] ms to a live worker (ARGV[2]). Live workers keep their own entries fresh (touch_stream
  each heartbeat), so only entries of consumers that stopped beating (dead, or cut off) get that
  idle. An entry delivered more than ARGV[6] times without an outcome (its workers kept dying on
  it) is dead-lettered instead. Consumers that hold nothing and were idle that long are deleted
  (XGROUP DELCONSUMER): gone workers do not pile up in the group. Bounded per call: the caller
  repeats it with the returned cursor until it is '0-0'.

  KEYS[1] stream         stream  the lane's stream
  KEYS[2] dlq            list    dead letters of the queue

  ARGV[1] group          the consumer group
  ARGV[2] claimer        the live worker that takes the entries
  ARGV[3] min_idle_ms    idle time after which a pending entry's consumer counts as dead
  ARGV[4] cursor         XAUTOCLAIM start id ('0-0' to begin)
  ARGV[5] count          entries to claim at most (1..1000)
  ARGV[6] max_deliveries deliveries after which an entry is dead-lettered (1..1000)
  ARGV[7] now_ms         client clock (the dead letter's failed_at)
  ARGV[8] lane           'stable' | 'canary' (in the dead-letter record)

  Returns {next_cursor, entries, dead, consumers_deleted}: entries = flat {id1, envelope1, ...}
          now pending on the claimer (each a crashed attempt of a dead worker, to run again)
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local stream_key, dlq_key = KEYS[1], KEYS[2]

-- @include worker_guard
-- @include streams

local min_idle, count = as_uint(ARGV[3]), as_uint(ARGV[5], 1000)
local max_deliveries, now = as_uint(ARGV[6], 1000), as_uint(ARGV[7])
if not name_ok(ARGV[1]) or not name_ok(ARGV[2]) or not min_idle or min_idle < 1 or
    not stream_id_ok(ARGV[4]) or not count or count < 1 or not max_deliveries or
    max_deliveries < 1 or not now or not is_lane(ARGV[8]) then
  return -4
end
local bad_type = check_types({{stream_key, 'stream'}, {dlq_key, 'list'}})
if bad_type then return bad_type end
if rcall('EXISTS', stream_key) == 0 then return {'0-0', {}, 0, 0} end
ensure_group(stream_key, ARGV[1])
local group, claimer = ARGV[1], ARGV[2]

local res = rcall('XAUTOCLAIM', stream_key, group, claimer, min_idle, ARGV[4], 'COUNT', count)
local out, dead = {}, 0
for _, entry in ipairs(res[2]) do
  local id = entry[1]
  local env = entry_envelope(entry[2])
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
return {res[1], out, dead, deleted}
