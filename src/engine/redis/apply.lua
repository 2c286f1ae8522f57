-- One request's change of one user: ARGV = op, user, session, now_us, timeout_ms, grace_ms,
-- node, groups, channel, idle_after_ms, platform_bit, activity, then for op `status`: mode,
-- text, emoji, expires_ms, last_seen_us, seq (what the store knows of a user this group may
-- hold nothing for). op is touch, open (a socket of the session opened on node), close (one
-- closed), end (logout) or status (set the manual status). activity: 0 keepalive, 1 active,
-- 2 idle. Returns reply(), or {-1} when the session was ended before (its activity is
-- refused), or {-2} for a close or end of a user this group holds nothing for.
local op = ARGV[1]
local uid, sid = tonumber(ARGV[2]), tonumber(ARGV[3])
local now_us = tonumber(ARGV[4])
local now_ms = math.floor(now_us / 1000)
local timeout_ms, grace_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local node, groups, channel = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local idle_after_ms, platform, activity = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])

if (op == 'touch' or op == 'open') and redis.call('ZSCORE', KEYS[6], sid) then
  return {-1}
end
local u = load(uid)
if not u then
  if op == 'close' or op == 'end' then
    if op == 'end' then redis.call('ZADD', KEYS[6], now_ms, sid) end
    return {-2}
  end
  u = new_user()
  if op == 'status' then
    u[2], u[3] = tonumber(ARGV[17]), tonumber(ARGV[18])
  end
end
local before = signature(u)
local s, si = find(u, sid)
if op == 'touch' or op == 'open' then
  s = touch(u, sid, now_us, timeout_ms, platform, activity)
  if op == 'open' then
    hold(s, node, 1)
    redis.call('SADD', base .. 'held:' .. node, uid)
  end
elseif op == 'close' then
  if s and held_by(s, node) > 0 then
    hold(s, node, -1)
    seen(u, s, now_us)
    if #s[4] == 0 then
      -- The last socket anywhere closed: the session ends after the grace.
      s[3] = now_ms + grace_ms
    end
    if not holds_any(u, node) then
      redis.call('SREM', base .. 'held:' .. node, uid)
    end
  end
elseif op == 'end' then
  redis.call('ZADD', KEYS[6], now_ms, sid)
  if s then
    table.remove(u[5], si)
    seen(u, nil, now_us)
  end
elseif op == 'status' then
  u[6] = {tonumber(ARGV[13]), ARGV[14], ARGV[15], tonumber(ARGV[16])}
end
local changed = settle(uid, u, before, now_us, groups, channel)
arm(uid, u, now_ms, idle_after_ms)
save(uid, u)
return reply(u, changed)
