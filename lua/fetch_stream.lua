--[[
  fetch_stream: a worker takes up to ARGV[1] new entries of its lane's stream (XREADGROUP '>'),
  unless its version has been rolled back. The entries stay pending on this consumer (the PEL
  plays the processing list's part) until ack_stream/fail_stream/return_stream settles them or
  reclaim_stream hands them to a live worker after this one died.

  KEYS[1] stream         stream  the lane's stream
  KEYS[2] rolled_back    set     versions rolled back on this queue

  ARGV[1] max            entries to take at most (1..1000)
  ARGV[2] version        the worker's version
  ARGV[3] group          the consumer group (created at '0' if missing)
  ARGV[4] consumer       the worker id

  Returns {entries, bad}: entries = flat {id1, envelope1, id2, ...}, oldest first; bad = flat
          {id, hex} of those whose envelope is not valid UTF-8 (or missing: hex '') (pending
          here too; the worker dead-letters them)
  Errors  -5 the version is rolled back: take nothing; -4 a bad argument; WRONGTYPE error reply
          if a key has the wrong type (nothing taken)
]]
local rcall = redis.call
local stream_key, rolled_back_key = KEYS[1], KEYS[2]

-- @include worker_guard
-- @include streams

local max = as_uint(ARGV[1], 1000)
if not max or max < 1 or (ARGV[2] or '') == '' or not name_ok(ARGV[3]) or
    not name_ok(ARGV[4]) then
  return -4
end
local bad_type = check_types({{stream_key, 'stream'}, {rolled_back_key, 'set'}})
if bad_type then return bad_type end
if rcall('SISMEMBER', rolled_back_key, ARGV[2]) == 1 then return -5 end
ensure_group(stream_key, ARGV[3])
local res = rcall('XREADGROUP', 'GROUP', ARGV[3], ARGV[4], 'COUNT', max, 'STREAMS', stream_key,
                  '>')
local out, bad = {}, {}
if res then
  for _, entry in ipairs(res[1][2]) do
    local env = entry_envelope(entry[2])
    if env and valid_utf8(env) then
      out[#out + 1] = entry[1]
      out[#out + 1] = env
    else
      bad[#bad + 1] = entry[1]
      bad[#bad + 1] = env and to_hex(env) or ''
    end
  end
end
return {out, bad}
