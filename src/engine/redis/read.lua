-- Current presence of users of one group: ARGV = user ids. Returns per user four numbers:
-- found (0 or 1), status, last_seen_us, seq.
local out = {}
for _, arg in ipairs(ARGV) do
  local u = load(tonumber(arg))
  if u then
    table.insert(out, 1)
    table.insert(out, u[1])
    table.insert(out, u[2])
    table.insert(out, u[3])
  else
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, 0)
  end
end
return out
