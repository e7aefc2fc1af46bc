-- FNV-1a-32 and the routing bucket (DESIGN.md section 2), shared by the routing scripts.
-- Real Redis has the `bit` library; fakeredis' Lua does not, so xor falls back to arithmetic on
-- the low byte (the only byte a per-byte xor can change). Multiplication by the FNV prime
-- 16777619 = 2^24 + 403 is split so that no intermediate exceeds 2^53. One top-level closure
-- with no upvalues (xor8 is made inside it, and only where `bit` is missing): every top-level
-- function is made anew on each call of a script, and route_enqueue's server time counts them
-- (issue 15). fnv1a32(salt .. key) % 10000:
local function sticky_bucket(salt, key)
  local bxor = bit and bit.bxor
  local xor8 = not bxor and function(a, b)
    local r, p = 0, 1
    for _ = 1, 8 do
      local x, y = a % 2, b % 2
      if x ~= y then r = r + p end
      a = (a - x) / 2
      b = (b - y) / 2
      p = p * 2
    end
    return r
  end
  local s = salt .. key
  local h = 2166136261
  for i = 1, #s do
    local c = string.byte(s, i)
    if bxor then
      h = bxor(h, c)
      if h < 0 then h = h + 4294967296 end
    else
      local low = h % 256
      h = h - low + xor8(low, c)
    end
    h = ((h % 256) * 16777216 + h * 403) % 4294967296
  end
  return h % 10000
end
