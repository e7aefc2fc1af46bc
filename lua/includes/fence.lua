-- Fencing (DESIGN.md invariant 4): a controller write carries the leader epoch it holds. A
-- queue remembers the highest epoch that wrote to it; an older epoch (a paused, deposed leader)
-- is refused. '' means an operator's own command, which needs no leadership.
local function fence_ok(fence_key, epoch)
  if epoch == nil or epoch == '' then return true end
  local e = tonumber(epoch)
  local cur = tonumber(rcall('GET', fence_key) or '0')
  if e == nil or e < cur then return false end
  if e > cur then rcall('SET', fence_key, e) end
  return true
end
