-- Ends what is due in one group: ARGV = now_us, groups, channel, grace_ms, max_slots.
-- First the sessions held by nodes whose lease ran out (they end a grace after the lease),
-- then every deadline slot that has started since the last sweep. Popping a slot is atomic,
-- so however many nodes sweep, each expiry happens once. Returns, per user it changed, the
-- user id followed by reply(), each prefixed by its length.
local now_us = tonumber(ARGV[1])
local now_ms = math.floor(now_us / 1000)
local groups, channel = tonumber(ARGV[2]), ARGV[3]
local grace_ms, max_slots = tonumber(ARGV[4]), tonumber(ARGV[5])
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
        arm(uid, u, now_ms)
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
      local live = {}
      for _, s in ipairs(u[5]) do
        if #s[4] > 0 or s[3] > now_ms then table.insert(live, s) end
      end
      u[5] = live
      local changed = 0
      if #live == 0 then changed = set_status(uid, u, 0, now_us, groups, channel) end
      arm(uid, u, now_ms)
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
