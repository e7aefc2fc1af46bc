-- Guards of the worker scripts: every key's TYPE and every argument is checked before the
-- first write, so a refused call changes nothing (a job is never LREMed from a processing
-- list and then lost because a later push hit a key of the wrong type).

-- 'none' (the key does not exist yet) is always accepted.
local function wrong_type(key, want)
  local t = rcall('TYPE', key)
  if type(t) == 'table' then t = t.ok end
  if t ~= 'none' and t ~= want then return t end
  return nil
end

-- specs: {{key, type}, ...}. Returns nil, or an error reply naming the first bad key: the
-- caller returns it, and the client sees a WRONGTYPE error like Redis's own.
local function check_types(specs)
  for _, s in ipairs(specs) do
    local t = wrong_type(s[1], s[2])
    if t then
      return redis.error_reply('WRONGTYPE pycanary: ' .. s[1] .. ' is a ' .. t ..
                               ', expected a ' .. s[2])
    end
  end
  return nil
end

-- A non-negative integer given as decimal digits, within max when given.
local function as_uint(s, max)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') or #s > 16 then return nil end
  local n = tonumber(s)
  if max ~= nil and n > max then return nil end
  return n
end

local function is_int(s)
  return type(s) == 'string' and string.match(s, '^%-?%d+$') ~= nil and #s <= 16
end

local function is_lane(s)
  return s == 'stable' or s == 'canary'
end

-- UTF-8 check with an ASCII fast path (nearly every envelope is ASCII). Invalid bytes cannot
-- be decoded by clients that decode replies, so fetch_jobs hands such jobs back as hex.
local function valid_utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 128 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 194 and c <= 223 then len, lo, hi = 2, 128, 191
      elseif c == 224 then len, lo, hi = 3, 160, 191
      elseif c == 237 then len, lo, hi = 3, 128, 159
      elseif c >= 225 and c <= 239 then len, lo, hi = 3, 128, 191
      elseif c == 240 then len, lo, hi = 4, 144, 191
      elseif c >= 241 and c <= 243 then len, lo, hi = 4, 128, 191
      elseif c == 244 then len, lo, hi = 4, 128, 143
      else return false end
      if i + len - 1 > n then return false end
      local c2 = string.byte(s, i + 1)
      if c2 < lo or c2 > hi then return false end
      for j = i + 2, i + len - 1 do
        local cj = string.byte(s, j)
        if cj < 128 or cj > 191 then return false end
      end
      i = i + len
    end
  end
  return true
end

local function to_hex(s)
  return (string.gsub(s, '.', function(ch) return string.format('%02x', string.byte(ch)) end))
end
