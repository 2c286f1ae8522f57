-- Keepalive activity a node coalesced (see `RedisBackend::touch`): ARGV = timeout_ms, groups,
-- channel, idle_after_ms, then per session: user, session, when (µs), platform bit. Each is the
-- touch `apply.lua` would have made at that time, in one call: a session ended meanwhile
-- (logout, revocation) is left ended, and a session that ended by its deadline meanwhile starts
-- again, announced as any first activity is. Returns, per user whose visible state changed, the
-- user id followed by reply(), each prefixed by its length (as `sweep.lua`).
local timeout_ms, groups = tonumber(ARGV[1]), tonumber(ARGV[2])
local channel, idle_after_ms = ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 4 do
  local uid, sid = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local now_us, platform = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  if not redis.call('ZSCORE', KEYS[6], sid) then
    local u = load(uid) or new_user()
    local before = signature(u)
    touch(u, sid, now_us, timeout_ms, platform, 0)
    local changed = settle(uid, u, before, now_us, groups, channel)
    arm(uid, u, math.floor(now_us / 1000), idle_after_ms)
    save(uid, u)
    if changed == 1 then
      local r = reply(u, changed)
      table.insert(out, #r + 1)
      table.insert(out, uid)
      for _, v in ipairs(r) do table.insert(out, v) end
    end
  end
end
return out
