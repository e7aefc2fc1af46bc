--[[
  dead_letters_stream: dead_letters for a queue on the Streams backend (same ARGV, replies and
  errors): requeued jobs are XADDed to the stable stream (field e; its consumer group,
  STREAM_GROUP of lua/includes/streams.lua, created with a missing stream).

  dead_letters: requeue or purge dead letters of one queue, a bounded batch per call. Each
  record is named by its exact text (as read from the dlq), so a record another operator moved
  meanwhile is counted as missing, never moved twice; the client (pycanary/dlq.py) reads a page,
  builds the envelopes (attempts reset) and repeats the call until nothing is left.

  Requeued jobs go to the TAIL of the stable stream (XADD, like a new job), behind
  the jobs already waiting: a dead letter waited for a fix, it does not jump the queue. The
  records of a batch are given oldest first, so they keep their order in the lane.

  KEYS[1] dlq            list  dead letters of the queue (newest at the left)
  KEYS[2] stream_stable  stream  where requeued jobs go (unused by 'purge', still type-checked)

  ARGV[1] action         'requeue' | 'purge'
  ARGV[2 + 2*(i-1) ..]   per record i: the record's exact text, then the envelope to push
                         ('requeue': non-empty; 'purge': '')

  Returns {done, missing}: done = records removed (and with 'requeue' pushed), missing = records
  no longer in the dlq (nothing done for them)
  Errors  as error replies, before any write: -13 a key has the wrong type, -4 a bad argument
          (unknown action, no records, more than 1000, an empty record, a requeue without an
          envelope)
]]
local rcall = redis.call
local dlq_key, stream_key = KEYS[1], KEYS[2]

-- @include guard
-- @include streams

local bad = bad_key_type({{1, 'list'}, {2, 'stream'}})
if bad then return guard_fail(-13, bad) end
local action = ARGV[1]
if action ~= 'requeue' and action ~= 'purge' then
  return guard_fail(-4, 'ARGV[1] action must be requeue or purge')
end
local n = (#ARGV - 1) / 2
if n < 1 or n % 1 ~= 0 or n > 1000 then
  return guard_fail(-4, 'ARGV: 1 to 1000 record, envelope pairs after the action')
end
for i = 2, #ARGV, 2 do
  if ARGV[i] == '' then return guard_fail(-4, 'ARGV[' .. i .. '] record is empty') end
  if action == 'requeue' and ARGV[i + 1] == '' then
    return guard_fail(-4, 'ARGV[' .. (i + 1) .. '] envelope is empty')
  end
end

local done, missing = 0, 0
for i = 2, #ARGV, 2 do
  if rcall('LREM', dlq_key, -1, ARGV[i]) == 0 then
    missing = missing + 1
  else
    done = done + 1
    if action == 'requeue' then
      ensure_stream(stream_key, STREAM_GROUP)
      rcall('XADD', stream_key, '*', 'e', ARGV[i + 1])
    end
  end
end
return {done, missing}
