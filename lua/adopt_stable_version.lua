--[[
  adopt_stable_version: a queue with no stable version yet takes the first worker's version.

  KEYS[1] config         hash  queue config

  ARGV[1] version        the worker's version
  ARGV[2] now_ms         client clock

  Returns the stable version in force after the call
]]
local rcall = redis.call
local config_key = KEYS[1]

local current = rcall('HGET', config_key, 'stable_version')
if current and current ~= '' then return current end
rcall('HSET', config_key, 'stable_version', ARGV[1], 'updated_at', ARGV[2])
rcall('HINCRBY', config_key, 'rev', 1)
return ARGV[1]
