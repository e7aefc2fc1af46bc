--[[
  record_outcomes: count finished attempts of one version and lane that ran outside pycanary's
  own workers (a Celery task, an RQ job: pycanary/integrations/), in the same metrics hashes
  and with the same fields as ack_jobs / fail_jobs / requeue_jobs (lua/includes/metrics.lua),
  so the controller, status and /metrics read them unchanged. The broker keeps the job itself;
  there is no processing list to remove it from, so every attempt given is counted.

  KEYS[1] metrics        hash  metrics slot of (version, lane, slot)
  KEYS[2] totals         hash  running totals of (version, lane)

  ARGV[1] ttl            seconds to keep the metrics slot (and idle totals)
  ARGV[2 + 6*(i-1) ..]   per attempt i: outcome ('ok' | 'retry' | 'dead' | 'crashed'), run
                         bucket ('' = not measured: a crash), wait bucket ('' = not known),
                         cpu bucket ('' = not measured), first ('1' = the job's first attempt,
                         else '0'), unit ('' or "<stratum>|<cluster>", see docs/keys.md)

  Counts: ok; failed + retried (retry), failed + dead (dead), failed + crashed (crashed);
  r<b>, w<b>, c<b>, first_attempts, first_failed (slot and totals, as ack_jobs and fail_jobs);
  n1|<unit>, x1|<unit> (totals only).
  Returns the number of attempts counted
  Errors  (error reply "PYCANARY <code> why", before any write) -13 a key has the wrong type,
          -4 a malformed argument
]]
local rcall = redis.call
local metrics_key, total_key = KEYS[1], KEYS[2]

-- @include metrics
-- @include worker_guard
-- @include guard

local OUTCOMES = {ok = true, retry = true, dead = true, crashed = true}
local ttl = as_uint(ARGV[1])
if not ttl or ttl < 1 or #ARGV < 7 or (#ARGV - 1) % 6 ~= 0 or not total_key then
  return guard_fail(-4, 'expected ttl, then 6 ARGV per attempt')
end
for i = 2, #ARGV, 6 do
  if not OUTCOMES[ARGV[i]] or (ARGV[i + 1] ~= '' and not is_int(ARGV[i + 1])) or
      (ARGV[i + 2] ~= '' and not is_int(ARGV[i + 2])) or
      not job_fields_ok(ARGV[i + 4], ARGV[i + 5], ARGV[i + 3]) then
    return guard_fail(-4, 'attempt at ARGV[' .. i .. '] is malformed')
  end
end
local bad = bad_key_type({{1, 'hash'}, {2, 'hash'}})
if bad then return guard_fail(-13, bad) end

local m, u, sw, n = {}, {}, {}, 0
for i = 2, #ARGV, 6 do
  local outcome = ARGV[i]
  n = n + 1
  if ARGV[i + 1] ~= '' then bump(m, 'r' .. ARGV[i + 1], 1) end
  if ARGV[i + 2] ~= '' then count_wait(u, sw, ARGV[i + 2]) end
  if ARGV[i + 3] ~= '' then bump(m, 'c' .. ARGV[i + 3], 1) end
  count_first(m, u, ARGV[i + 4], ARGV[i + 5], outcome ~= 'ok')
  if outcome == 'ok' then
    bump(m, 'ok', 1)
  else
    bump(m, 'failed', 1)
    if outcome == 'retry' then bump(m, 'retried', 1)
    elseif outcome == 'dead' then bump(m, 'dead', 1)
    else bump(m, 'crashed', 1) end
  end
end
flush_metrics(metrics_key, total_key, m, ttl, u, sw)
return n
