--[[
  requeue_jobs: return a dead (or vanished) worker's in-flight jobs to the head of the lane
  they came from (to stable when the canary lane is closed), oldest at the very head, so they
  run next. Bounded per call; the reaper repeats it until the processing list is empty, and
  the call that empties it drops the list from the queue's processing index.

  With the crash keys (KEYS[6..8], the reaper of a dead worker whose version is known), a job
  the worker had started (an entry in its running hash) is a crashed attempt of that version
  and lane, counted in the same step as its return: `crashed` and `failed` (slot and totals),
  `first_attempts` and `first_failed` when it was the job's first attempt, n1|/x1|<unit>
  (totals only); its envelope goes back with `attempts` one higher (the attempt was made), so
  the next run is not counted as a first attempt again. A job fetched but not started goes
  back unchanged and uncounted.

  KEYS[1] processing     list  the dead worker's in-flight jobs of the queue
  KEYS[2] lane_stable    list
  KEYS[3] lane_canary    list
  KEYS[4] config         hash  queue config (is the canary lane open?)
  KEYS[5] index          hash  worker id -> "<lane> <version>", every processing list
  KEYS[6] running        hash  (optional) envelope -> "<first> <unit>" of the jobs it started
  KEYS[7] metrics        hash  (with 6) metrics slot of (its version, lane, slot now)
  KEYS[8] totals         hash  (with 6) running totals of (its version, lane)

  ARGV[1] lane           'stable' | 'canary': the lane the worker consumed
  ARGV[2] max            jobs to move at most (1..10000)
  ARGV[3] worker_id      whose list it is (its index entry is dropped once the list is empty)
  ARGV[4] ttl            (with KEYS[6..8]) seconds to keep the metrics slot

  Returns {moved, remaining, target lane, crashed}
  Errors  -4 a bad argument; WRONGTYPE error reply if a key has the wrong type (no change)
]]
local rcall = redis.call
local processing_key, lane_stable, lane_canary, config_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local index_key = KEYS[5]
local running_key, metrics_key, total_key = KEYS[6], KEYS[7], KEYS[8]

-- @include lanes
-- @include metrics
-- @include worker_guard

local max = as_uint(ARGV[2], 10000)
if not is_lane(ARGV[1]) or not max or max < 1 or (ARGV[3] or '') == '' then return -4 end
local counting = running_key ~= nil
if counting and (not total_key or #KEYS ~= 8) then return -4 end
if not counting and #KEYS ~= 5 then return -4 end
local ttl = 0
if counting then
  ttl = as_uint(ARGV[4])
  if not ttl or ttl < 1 then return -4 end
end
local specs = {{processing_key, 'list'}, {lane_stable, 'list'}, {lane_canary, 'list'},
               {config_key, 'hash'}, {index_key, 'hash'}}
if counting then
  specs[6], specs[7], specs[8] = {running_key, 'hash'}, {metrics_key, 'hash'}, {total_key, 'hash'}
end
local bad_type = check_types(specs)
if bad_type then return bad_type end

-- The envelope's own `attempts` is its last one (the payload, which may hold the same key,
-- comes before it; strings cannot hold an unescaped quote). Left unchanged when not found.
local function next_attempt(raw)
  local s, e, n
  local init = 1
  while true do
    local s2, e2, n2 = string.find(raw, '"attempts":(%d+)', init)
    if not s2 then break end
    s, e, n, init = s2, e2, n2, e2 + 1
  end
  if not s or #n > 15 then return raw end
  return string.sub(raw, 1, s - 1) .. '"attempts":' .. string.format('%d', tonumber(n) + 1) ..
         string.sub(raw, e + 1)
end

local target, target_name = lane_stable, 'stable'
if ARGV[1] == 'canary' and canary_open(config_key) then
  target, target_name = lane_canary, 'canary'
end
-- The processing list holds the newest fetch at the left: moving from the left to the right
-- end of the lane leaves the oldest job rightmost, first to be taken.
local moved, crashed, m, u = 0, 0, {}, {}
for _ = 1, max do
  local raw = rcall('LPOP', processing_key)
  if not raw then break end
  local mark = counting and rcall('HGET', running_key, raw)
  if mark then
    rcall('HDEL', running_key, raw)
    crashed = crashed + 1
    local first, unit = string.sub(mark, 1, 1), string.sub(mark, 3)
    if job_fields_ok(first, unit, '') then count_first(m, u, first, unit, true) end
    raw = next_attempt(raw)
  end
  rcall('RPUSH', target, raw)
  moved = moved + 1
end
if crashed > 0 then
  bump(m, 'crashed', crashed)
  bump(m, 'failed', crashed)
  flush_metrics(metrics_key, total_key, m, ttl, u)
end
local remaining = rcall('LLEN', processing_key)
if remaining == 0 then
  if rcall('HEXISTS', index_key, ARGV[3]) == 1 then rcall('HDEL', index_key, ARGV[3]) end
  if counting then rcall('DEL', running_key) end
end
return {moved, remaining, target_name, crashed}
