-- The ids of one user's live sessions: ARGV = user id.
local u = load(tonumber(ARGV[1]))
local out = {}
if u then
  for _, s in ipairs(u[5]) do table.insert(out, s[1]) end
end
return out
