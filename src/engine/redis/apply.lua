-- One request's change of one user: ARGV = op, user, session, now_us, timeout_ms, grace_ms,
-- node, groups, channel. op is touch, open (a socket of the session opened on node), close (one
-- closed) or end (logout). Returns reply(), or {-1} when the session was ended before (its
-- activity is refused), or {-2} for a close or end of a user this group holds nothing for.
local op = ARGV[1]
local uid, sid = tonumber(ARGV[2]), tonumber(ARGV[3])
local now_us = tonumber(ARGV[4])
local now_ms = math.floor(now_us / 1000)
local timeout_ms, grace_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local node, groups, channel = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]

if (op == 'touch' or op == 'open') and redis.call('ZSCORE', KEYS[6], sid) then
  return {-1}
end
local u = load(uid)
if not u then
  if op == 'close' or op == 'end' then
    if op == 'end' then redis.call('ZADD', KEYS[6], now_ms, sid) end
    return {-2}
  end
  u = {0, 0, 0, 0, {}}
end
local s, si = find(u, sid)
local changed = 0
if op == 'touch' or op == 'open' then
  if not s then
    s = {sid, now_us, now_ms + timeout_ms, {}}
    table.insert(u[5], s)
  end
  seen(u, s, now_us)
  if s[3] < now_ms + timeout_ms then s[3] = now_ms + timeout_ms end
  if op == 'open' then
    hold(s, node, 1)
    redis.call('SADD', base .. 'held:' .. node, uid)
  end
  changed = set_status(uid, u, 1, now_us, groups, channel)
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
    if #u[5] == 0 then changed = set_status(uid, u, 0, now_us, groups, channel) end
  end
end
arm(uid, u, now_ms)
save(uid, u)
return reply(u, changed)
