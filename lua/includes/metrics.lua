-- Per-slot metrics: counts in Lua tables first, then one HINCRBY per distinct field, so a batch
-- of jobs costs a handful of writes. Histogram fields: r<bucket> run time, w<bucket> wait.
local function bump(t, field, n)
  t[field] = (t[field] or 0) + n
end

-- The slot hash serves windows (status, sparklines); the running total serves the controller,
-- which subtracts its last snapshot to get exactly the attempts since its previous check.
local function flush_metrics(metrics_key, total_key, t, ttl)
  local any = false
  for field, n in pairs(t) do
    rcall('HINCRBY', metrics_key, field, n)
    rcall('HINCRBY', total_key, field, n)
    any = true
  end
  if any then
    rcall('EXPIRE', metrics_key, ttl)
    rcall('EXPIRE', total_key, ttl)
  end
end
