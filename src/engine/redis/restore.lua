-- Installs users restored from the store: ARGV = now_us, groups, then per user: id, seq,
-- last_seen_us, session count, and per session: id, last_activity_us, expires_ms. A user the
-- group holds already keeps its state and gains the sessions it lacks (the store may be a
-- persist interval behind). Announces nothing: this state is not a change.
local now_us = tonumber(ARGV[1])
local now_ms = math.floor(now_us / 1000)
local groups = tonumber(ARGV[2])
local i = 3
while i <= #ARGV do
  local uid, seq, last_seen = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  local u = load(uid) or {0, last_seen, seq, 0, {}}
  for _ = 1, n do
    local sid, activity, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    if not find(u, sid) and not redis.call('ZSCORE', KEYS[6], sid) and expires > now_ms then
      table.insert(u[5], {sid, activity, expires, {}})
    end
  end
  if #u[5] > 0 and u[1] == 0 then
    u[1] = 1
    if redis.call('SETBIT', KEYS[3], math.floor(uid / groups), 1) == 0 then
      redis.call('INCR', KEYS[4])
    end
  end
  if #u[5] > 0 then
    arm(uid, u, now_ms)
    save(uid, u)
  end
end
return 1
