-- The guards every script needs; guard.lua includes these and adds the rest. Guards run before
-- a script's first write, so a refused call changes nothing (the BullMQ pattern). A refusal is
-- an error reply "PYCANARY <code> <why>" (codes in pycanary/errors.py): -13 a key holds another
-- type, -4 an argument is malformed, -1 a weight is not 0..10000.
-- These functions use globals (redis.call, string.match), not the script's locals: a function
-- that captures a chunk-level local costs an upvalue each time the script runs, and
-- route_enqueue runs once per job (issue 15: ~60 ns per upvalue on its hot path).

local function guard_fail(code, why)
  return redis.error_reply('PYCANARY ' .. code .. ' ' .. why)
end

-- spec: list of {KEYS index, expected type[, older type also accepted]}; 'none' (missing) is
-- always accepted. Returns nil when every key is fine, else the reason.
local function bad_key_type(spec)
  for _, s in ipairs(spec) do
    local key = KEYS[s[1]]
    local t = redis.call('TYPE', key)
    if type(t) == 'table' then t = t['ok'] end
    if t ~= 'none' and t ~= s[2] and t ~= s[3] then
      return 'KEYS[' .. s[1] .. '] ' .. key .. ' is a ' .. tostring(t) .. ', expected ' .. s[2]
    end
  end
  return nil
end

-- An integer string within lo..hi (hi may be nil), or nil.
local function int_arg(s, lo, hi)
  if type(s) ~= 'string' or not string.match(s, '^%-?%d+$') then return nil end
  local n = tonumber(s)
  if n == nil or (lo ~= nil and n < lo) or (hi ~= nil and n > hi) then return nil end
  return n
end

-- A stored number (config field, fence) that another client may have garbled.
local function stored_int_ok(v)
  return v == false or v == nil or (type(v) == 'string' and string.match(v, '^%-?%d+$') ~= nil)
end

-- A command that doubles as its key's type check (route_enqueue's hot path: no TYPE per key).
-- Returns the reply, or nil and an error reply: -13 naming KEYS[i] when the key holds another
-- type than `expected`; any other error (OOM, ACL) is passed on as Redis gave it.
local function checked_call(i, expected, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    if string.find(tostring(r.err), 'WRONGTYPE', 1, true) then
      local t = redis.call('TYPE', KEYS[i])
      if type(t) == 'table' then t = t['ok'] end
      return nil, redis.error_reply('PYCANARY -13 KEYS[' .. i .. '] ' .. KEYS[i] .. ' is a ' ..
        tostring(t) .. ', expected ' .. expected)
    end
    return nil, r
  end
  return r, nil
end
