-- Installs users restored from the store: ARGV = now_us, groups, idle_after_ms, then per user:
-- id, seq, last_seen_us, mode, text, emoji, manual expiry (ms, 0 = none), session count, and
-- per session: id, last_activity_us, expires_ms, platform bit. A user the group holds already
-- keeps its state and gains the sessions it lacks (the store may be a persist interval
-- behind). Announces nothing: this state is not a change.
local now_us = tonumber(ARGV[1])
local now_ms = math.floor(now_us / 1000)
local groups, idle_after_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
while i <= #ARGV do
  local uid, seq, last_seen = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local manual = {tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6])}
  local n = tonumber(ARGV[i + 7])
  i = i + 8
  local u = load(uid)
  if not u then
    u = new_user()
    u[2], u[3], u[6] = last_seen, seq, manual
  end
  for _ = 1, n do
    local sid, activity = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    local expires, platform = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    i = i + 4
    if not find(u, sid) and not redis.call('ZSCORE', KEYS[6], sid) and expires > now_ms then
      table.insert(u[5], {sid, activity, expires, {}, 1, now_ms, platform})
    end
  end
  if #u[5] > 0 and u[1] == 0 then
    u[1] = 1
    if redis.call('SETBIT', KEYS[3], math.floor(uid / groups), 1) == 0 then
      redis.call('INCR', KEYS[4])
    end
  end
  if #u[5] > 0 or u[6][1] ~= 0 or u[6][2] ~= '' or u[6][3] ~= '' then
    arm(uid, u, now_ms, idle_after_ms)
    save(uid, u)
  end
end
return 1
