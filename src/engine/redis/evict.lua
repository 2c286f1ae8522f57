-- Drops users the store now holds: ARGV = pairs of user id and the seq that was written. Only
-- a user still offline at that seq is dropped (the store's row is then current); any newer
-- change keeps the user.
local dropped = 0
for i = 1, #ARGV, 2 do
  local uid, seq = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local u = load(uid)
  if u and u[1] == 0 and #u[5] == 0 and u[3] == seq then
    redis.call('HDEL', KEYS[1], uid)
    dropped = dropped + 1
  end
end
return dropped
