-- Ends what is due in one group: ARGV = now_us, groups, channel, grace_ms, max_slots,
-- idle_after_ms. First the sessions held by nodes whose lease ran out (they end a grace after
-- the lease), then every deadline slot that has started since the last sweep: sessions past
-- their end end, sessions without real activity for idle_after turn idle, expired manual
-- statuses reset. Popping a slot is atomic, so however many nodes sweep, each of these happens
-- once. Returns, per user it looked at, the user id followed by reply(), each prefixed by its
-- length.
local now_us = tonumber(ARGV[1])
local now_ms = math.floor(now_us / 1000)
local groups, channel = tonumber(ARGV[2]), ARGV[3]
local grace_ms, max_slots, idle_after_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}

local function emit(uid, u, changed)
  local r = reply(u, changed)
  table.insert(out, #r + 1)
  table.insert(out, uid)
  for _, v in ipairs(r) do table.insert(out, v) end
end

local nodes = redis.call('HGETALL', KEYS[5])
for i = 1, #nodes, 2 do
  local node, lease = tonumber(nodes[i]), tonumber(nodes[i + 1])
  if lease < now_ms then
    local held_key = base .. 'held:' .. node
    for _, member in ipairs(redis.call('SMEMBERS', held_key)) do
      local uid = tonumber(member)
      local u = load(uid)
      if u then
        for _, s in ipairs(u[5]) do
          if held_by(s, node) > 0 then
            hold(s, node, -held_by(s, node))
            if #s[4] == 0 then s[3] = lease + grace_ms end
          end
        end
        arm(uid, u, now_ms, idle_after_ms)
        save(uid, u)
        emit(uid, u, 0)
      end
    end
    redis.call('DEL', held_key)
    redis.call('HDEL', KEYS[5], nodes[i])
  end
end

local first = swept(now_ms) + 1
local last = math.min(math.floor(now_ms / SLOT_MS), first - 1 + max_slots)
for slot = first, last do
  local key = base .. 'd:' .. slot
  local members = redis.call('SMEMBERS', key)
  redis.call('DEL', key)
  for _, member in ipairs(members) do
    local uid = tonumber(member)
    local u = load(uid)
    -- An entry of a slot the user is no longer armed in is stale.
    if u and u[4] == slot then
      u[4] = 0
      local before = signature(u)
      local live = {}
      for _, s in ipairs(u[5]) do
        if idle_after_ms > 0 and s[5] == 1 and s[6] + idle_after_ms <= now_ms then s[5] = 0 end
        if #s[4] > 0 or s[3] > now_ms then table.insert(live, s) end
      end
      u[5] = live
      if u[6][4] > 0 and u[6][4] <= now_ms then
        u[7] = u[6][4]
        u[6] = {0, '', '', 0}
      end
      local changed = settle(uid, u, before, now_us, groups, channel)
      arm(uid, u, now_ms, idle_after_ms)
      save(uid, u)
      emit(uid, u, changed)
    end
  end
end
if last >= first then redis.call('SET', KEYS[2], last) end
-- Ended sessions are remembered for an hour: longer than any node keeps a token cached
-- without hearing of its revocation.
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now_ms - 3600000)
return out
