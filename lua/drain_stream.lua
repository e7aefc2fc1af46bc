--[[
  drain_stream: after a rollback or a promotion closed the canary lane, move the canary
  stream's jobs to the stable stream in bounded batches, in order: entries not yet delivered
  (after the group's last-delivered id), and entries pending on retired consumers (ARGV[4..]:
  workers that are gone or will not run them). Each moved entry is XADDed to the stable stream
  (same fields) and acked and deleted on the canary stream in the same call, so nothing is lost
  or duplicated; entries pending on other consumers (running on a live worker) are skipped and
  settle by their own ack. The client (pycanary/drain.py) repeats the call with the returned
  cursor while producers keep adding. Stream ids only grow, so drained jobs queue behind what
  the stable stream already holds, in their canary order.

  KEYS[1] from_stream    stream  the stream to empty (stream_canary)
  KEYS[2] to_stream      stream  the stream that receives the jobs (stream_stable)

  ARGV[1] group          the consumer group of both streams
  ARGV[2] max            entries to look at at most (1..5000)
  ARGV[3] cursor         '-' to begin, else the last id the previous call looked at
  ARGV[4..] retired      consumer names whose pending entries are moved too (at most 1000)

  Returns {moved, next_cursor, skipped}: next_cursor = '' when the stream was read to its end;
          skipped = entries left pending on live consumers in this batch
  Errors  -4 a bad argument or both keys the same; as an error reply before any write: -13 a
          key is not a stream
]]
local rcall = redis.call
local from_key, to_key = KEYS[1], KEYS[2]

-- @include guard
-- @include streams

local bad = bad_key_type({{1, 'stream'}, {2, 'stream'}})
if bad then return guard_fail(-13, bad) end
local max = int_arg(ARGV[2], 1, 5000)
if not name_ok(ARGV[1]) or max == nil or from_key == to_key or #ARGV > 1003 or
    (ARGV[3] ~= '-' and not stream_id_ok(ARGV[3] or '')) then
  return -4
end
local retired = {}
for i = 4, #ARGV do
  if not name_ok(ARGV[i]) then return -4 end
  retired[ARGV[i]] = true
end
if rcall('EXISTS', from_key) == 0 then return {0, '', 0} end
local group = ARGV[1]
ensure_group(from_key, group)
local last_delivered = '0-0'
for _, g in ipairs(rcall('XINFO', 'GROUPS', from_key)) do
  local name, last
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
  end
  if name == group then last_delivered = last end
end

local start = ARGV[3] == '-' and '-' or '(' .. ARGV[3]
local entries = rcall('XRANGE', from_key, start, '+', 'COUNT', max)
local moved, skipped = 0, 0
local gone, acked = {}, {}
if #entries > 0 then ensure_stream(to_key, group) end
for _, entry in ipairs(entries) do
  local id = entry[1]
  local take = id_after(id, last_delivered)
  local pending = false
  if not take then
    local owner = pending_owner(from_key, group, id)
    pending = owner ~= nil
    take = owner == nil or retired[owner] == true
  end
  if take then
    rcall('XADD', to_key, '*', unpack(entry[2]))
    if pending then acked[#acked + 1] = id end
    gone[#gone + 1] = id
    moved = moved + 1
  else
    skipped = skipped + 1
  end
end
-- one XACK and one XDEL per chunk rather than per entry (unpack() of a whole batch could
-- exceed the Lua stack)
for i = 1, #acked, 500 do
  rcall('XACK', from_key, group, unpack(acked, i, math.min(i + 499, #acked)))
end
for i = 1, #gone, 500 do
  rcall('XDEL', from_key, unpack(gone, i, math.min(i + 499, #gone)))
end
local cursor = ''
if #entries == max then cursor = entries[#entries][1] end
return {moved, cursor, skipped}
