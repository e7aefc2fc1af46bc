--[[
  return_stream: entries a worker holds but will not start (it is stopping, its version was
  rolled back or replaced, or a payload schema it does not accept) go back for another worker:
  each is re-added (XADD, a new entry with the same fields) to its lane's stream, or to the
  stable stream when that lane is a closed canary lane, and the held entry acked and deleted,
  in one step. A stream cannot un-deliver an entry, so a returned job queues at the tail.

  KEYS[1] stream         stream  the lane's stream the entries were fetched from
  KEYS[2] stream_stable  stream  the stable stream (may be KEYS[1])
  KEYS[3] config         hash    queue config (is the canary lane open?)

  ARGV[1] group          the consumer group
  ARGV[2] consumer       the worker id
  ARGV[3] lane           'stable' | 'canary': the lane KEYS[1] is
  ARGV[4..] ids          entry ids, oldest first (at most 1000)

  Returns {returned, to_stable, late}: late = ids no longer pending on this worker (left alone)
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local stream_key, stable_key, config_key = KEYS[1], KEYS[2], KEYS[3]

-- @include lanes
-- @include worker_guard
-- @include streams

if not name_ok(ARGV[1]) or not name_ok(ARGV[2]) or not is_lane(ARGV[3]) or #ARGV < 4 or
    #ARGV > 1003 then
  return -4
end
for i = 4, #ARGV do
  if not stream_id_ok(ARGV[i]) then return -4 end
end
local bad_type = check_types({{stream_key, 'stream'}, {stable_key, 'stream'},
                              {config_key, 'hash'}})
if bad_type then return bad_type end
local group, consumer = ARGV[1], ARGV[2]
local target, to_stable = stream_key, 0
if ARGV[3] == 'canary' and not canary_open(config_key) then target = stable_key end
local returned, late = 0, 0
local exists = rcall('EXISTS', stream_key) == 1
for i = 4, #ARGV do
  local id = ARGV[i]
  local entry = exists and pending_owner(stream_key, group, id) == consumer and
                rcall('XRANGE', stream_key, id, id)[1]
  if not entry then
    late = late + 1
  else
    ensure_stream(target, group)
    rcall('XADD', target, '*', unpack(entry[2]))
    rcall('XACK', stream_key, group, id)
    rcall('XDEL', stream_key, id)
    returned = returned + 1
    if target ~= stream_key then to_stable = to_stable + 1 end
  end
end
return {returned, to_stable, late}
