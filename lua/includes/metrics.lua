-- Per-slot metrics: counts in Lua tables first, then one HINCRBY per distinct field, so a batch
-- of jobs costs a handful of writes. Histogram fields: r<bucket> run time, w<bucket> wait,
-- c<bucket> handler CPU time. Analysis-unit fields (n1|<unit> first attempts, x1|<unit> failed
-- first attempts, unit = "<stratum>|<cluster>") go to the running totals only: a slot would
-- multiply them by the number of slots kept (memory per deployment, issue 15).
local function bump(t, field, n)
  t[field] = (t[field] or 0) + n
end

-- Queue wait: the fine bucket in the running totals (u, totals only), and in the slot (s, slot
-- only) one coarse bucket per WAIT_GROUP fine ones, named by the middle fine bucket of its
-- group (bucket 0, below 100 us, stays 0): a slot keeps a handful of wait fields instead of
-- ~25, so the wait quantiles of a window are within ~1.5x (memory per deployment, issue 15).
local WAIT_GROUP = 8
local function count_wait(u, s, bucket)
  bump(u, 'w' .. bucket, 1)
  local b = tonumber(bucket)
  if b > 0 then b = math.floor((b - 1) / WAIT_GROUP) * WAIT_GROUP + 1 + WAIT_GROUP / 2 end
  bump(s, 'w' .. b, 1)
end

-- Run and CPU time: the fine bucket in the running totals (u), and in the slot (s) one bucket
-- per pair of fine ones, named by the lower of the pair (1-2 -> 1, 3-4 -> 3; bucket 0 stays
-- 0): growth 1.21 in slots, half the fields (issue 15). The analysis reads the totals only.
local function count_pair(u, s, prefix, bucket)
  bump(u, prefix .. bucket, 1)
  local b = tonumber(bucket)
  if b > 0 then b = math.floor((b - 1) / 2) * 2 + 1 end
  bump(s, prefix .. b, 1)
end

-- The slot hash serves windows (status, sparklines); the running total serves the controller,
-- which subtracts its last snapshot to get exactly the attempts since its previous check.
-- totals_only: fields written to the running totals alone (may be nil); slot_only: fields
-- written to the slot alone (the coarse wait buckets; may be nil).
local function flush_metrics(metrics_key, total_key, t, ttl, totals_only, slot_only)
  local any = false
  for field, n in pairs(t) do
    rcall('HINCRBY', metrics_key, field, n)
    rcall('HINCRBY', total_key, field, n)
    any = true
  end
  for field, n in pairs(totals_only or {}) do
    rcall('HINCRBY', total_key, field, n) -- the unit counts, the fine wait buckets
    any = true
  end
  for field, n in pairs(slot_only or {}) do
    rcall('HINCRBY', metrics_key, field, n) -- the coarse wait buckets
    any = true
  end
  if any then
    rcall('EXPIRE', metrics_key, ttl)
    rcall('EXPIRE', total_key, ttl)
  end
end

-- A job's analysis fields, checked before any write: first is '1' (the job's first attempt)
-- or '0'; unit is '' (not counted per unit) or "<stratum>|<cluster>" with a stratum of the
-- tenant alphabet and a cluster 0..9999; cpu is '' (not measured) or a bucket number.
local function job_fields_ok(first, unit, cpu)
  if first ~= '0' and first ~= '1' then return false end
  if unit ~= '' and (type(unit) ~= 'string' or #unit > 200 or
      not string.match(unit, '^[A-Za-z0-9._:-]*|%d%d?%d?%d?$')) then
    return false
  end
  return cpu == '' or (type(cpu) == 'string' and string.match(cpu, '^%d+$') ~= nil and #cpu <= 4)
end

-- Count one finished attempt's job-level fields: first attempts (and failed ones) in m (slot
-- and totals), per unit in u (totals only).
local function count_first(m, u, first, unit, failed)
  if first ~= '1' then return end
  bump(m, 'first_attempts', 1)
  if failed then bump(m, 'first_failed', 1) end
  if unit ~= '' then
    bump(u, 'n1|' .. unit, 1)
    if failed then bump(u, 'x1|' .. unit, 1) end
  end
end
