-- Drops users the store now holds: ARGV = pairs of user id and the seq that was written. Only
-- a user still offline at that seq, without a manual status, is dropped (the store's row is
-- then current; a manual status stays for its reset and for when the user comes back).
local dropped = 0
for i = 1, #ARGV, 2 do
  local uid, seq = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local u = load(uid)
  if u and u[1] == 0 and #u[5] == 0 and u[3] == seq
      and u[6][1] == 0 and u[6][2] == '' and u[6][3] == '' then
    redis.call('HDEL', KEYS[1], uid)
    dropped = dropped + 1
  end
end
return dropped
