-- Current presence of users of one group: ARGV = user ids. Returns per user eleven values:
-- found (0 or 1), then reply()'s status, last_seen_us, seq, availability, platforms, manual
-- mode, manual expiry, text, emoji, last reset expiry.
local out = {}
for _, arg in ipairs(ARGV) do
  local u = load(tonumber(arg))
  if u then
    table.insert(out, 1)
    local r = reply(u, 0)
    for i = 2, 11 do table.insert(out, r[i]) end
  else
    for _ = 1, 8 do table.insert(out, 0) end
    table.insert(out, '')
    table.insert(out, '')
    table.insert(out, 0)
  end
end
return out
