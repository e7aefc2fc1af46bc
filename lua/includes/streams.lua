-- Helpers of the Streams backend scripts (docs/strategies.md, "Streams backend"). The caller
-- defines `rcall` first. A lane stream has one consumer group; an entry holds one job, field
-- `e` = the envelope; an acked entry is deleted (XACK + XDEL in the same script), so a stream
-- holds only jobs that are waiting or running and no trimming can drop one.

-- The one consumer group of every lane stream (pycanary/keys.py STREAM_GROUP; a test checks
-- they agree). Scripts called per worker take it in ARGV; route_xadd_many keeps
-- route_enqueue_many's ARGV and uses this.
local STREAM_GROUP = 'pycanary-workers'

-- The group exists, from the stream's first entry ('0'): created (with the stream) if missing.
local function ensure_group(key, group)
  if rcall('EXISTS', key) == 1 then
    local groups = rcall('XINFO', 'GROUPS', key)
    for _, g in ipairs(groups) do
      for j = 1, #g, 2 do
        if g[j] == 'name' and g[j + 1] == group then return end
      end
    end
  end
  rcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
end

-- The producers' cheap form: a stream created by these scripts always gets its group, so only
-- a missing stream needs one (fetch_stream runs ensure_group, which also repairs a lost group).
local function ensure_stream(key, group)
  if rcall('EXISTS', key) == 0 then rcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM') end
end

-- The consumer that holds a pending entry and its delivery count, or nil when the entry is not
-- pending (acked, drained, or never delivered).
local function pending_owner(key, group, id)
  local p = rcall('XPENDING', key, group, id, id, 1)
  if #p == 0 then return nil, 0 end
  return p[1][2], tonumber(p[1][4])
end

-- The envelope of an entry's field list {'e', envelope, ...}, or nil.
local function entry_envelope(fields)
  if type(fields) ~= 'table' then return nil end
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then return fields[j + 1] end
  end
  return nil
end

-- A stream id 'ms-seq' as two numbers (ids only grow: compared ms first, then seq).
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_after(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  if am ~= bm then return am > bm end
  return as > bs
end

-- A consumer name or group name: non-empty, printable, bounded (worker ids are host:pid:hex).
local function name_ok(s)
  return type(s) == 'string' and #s > 0 and #s <= 200 and not string.find(s, '[%c ]')
end

-- A stream id given by the client.
local function stream_id_ok(s)
  return type(s) == 'string' and string.match(s, '^%d+%-%d+$') ~= nil and #s <= 41
end
