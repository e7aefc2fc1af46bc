--[[
  adopt_stable_version: a queue with no stable version yet takes the first worker's version.

  KEYS[1] config         hash  queue config

  ARGV[1] version        the worker's version
  ARGV[2] now_ms         client clock

  Returns the stable version in force after the call
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local config_key = KEYS[1]

-- @include guard

local bad = bad_key_type({{1, 'hash'}})
if bad then return guard_fail(-13, bad) end
if ARGV[1] == nil or ARGV[1] == '' then return guard_fail(-4, 'ARGV[1] version is empty') end
if int_arg(ARGV[2], 0) == nil then return guard_fail(-4, 'ARGV[2] now_ms must be an integer') end

local current = rcall('HGET', config_key, 'stable_version')
if current and current ~= '' then return current end
rcall('HSET', config_key, 'stable_version', ARGV[1], 'updated_at', ARGV[2])
rcall('HINCRBY', config_key, 'rev', 1)
return ARGV[1]
