-- Argument checks shared by the config scripts. Python validates first and names the field;
-- these guard against other clients writing garbage into a queue's config.
local function as_weight(s)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
  local n = tonumber(s)
  if n == nil or n > 10000 then return nil end
  return n
end
