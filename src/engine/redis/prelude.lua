-- Shared by every presence script. All keys of one call belong to one slot group:
--   KEYS[1] = {P:g}:u      hash: user id -> cmsgpack state (below)
--   KEYS[2] = {P:g}:sw     the last deadline slot swept
--   KEYS[3] = {P:g}:on     bitmap: bit (user id // GROUPS) set while the user is online
--   KEYS[4] = {P:g}:n      number of online users of the group
--   KEYS[5] = {P:g}:nodes  hash: node id -> lease expiry (ms)
--   KEYS[6] = {P:g}:rv     sorted set: ended session id -> when it ended (ms)
-- and, in the same slot, {P:g}:d:<slot> (set of user ids armed in a deadline slot) and
-- {P:g}:held:<node> (set of user ids with a session a node holds by a socket).
--
-- A user's state is {status, last_seen_us, seq, armed_slot, sessions, manual}:
--   status 1 = online; last_seen_us 0 = never;
--   a session is {id, last_activity_us, expires_ms, holders, active, real_activity_ms,
--   platform_bit}, holders a flat list {node, sockets, node, sockets, ...}; a session with
--   holders never expires, one without ends at expires_ms;
--   manual is {mode, text, emoji, expires_ms}: mode 0 auto, 1 away, 2 dnd; "" = no text or
--   emoji; expires_ms 0 = never; the optional 7th field is the expiry (ms) of the manual
--   status that last reset itself (the store resets it too, if it still holds that one).
-- The user is online iff it has a session. Availability: 0 none (offline), 1 active, 2 idle,
-- 3 dnd. What a viewer can see (status, availability, platforms, text, emoji) is the user's
-- signature; a change of it is announced on the events channel with a new seq.

local SLOT_MS = 250
local base = string.sub(KEYS[1], 1, -2)

local function slot_of(ms)
  return math.ceil(ms / SLOT_MS)
end

-- The last slot swept; a group never swept starts just before now.
local function swept(now_ms)
  local s = redis.call('GET', KEYS[2])
  if s then return tonumber(s) end
  s = math.floor(now_ms / SLOT_MS) - 1
  redis.call('SET', KEYS[2], s)
  return s
end

local function new_user()
  return {0, 0, 0, 0, {}, {0, '', '', 0}}
end

local function load(uid)
  local raw = redis.call('HGET', KEYS[1], uid)
  if raw then return cmsgpack.unpack(raw) end
  return nil
end

local function save(uid, u)
  redis.call('HSET', KEYS[1], uid, cmsgpack.pack(u))
end

local function find(u, sid)
  for i, s in ipairs(u[5]) do
    if s[1] == sid then return s, i end
  end
  return nil, nil
end

-- Sockets `node` holds of session `s`.
local function held_by(s, node)
  local h = s[4]
  for i = 1, #h, 2 do
    if h[i] == node then return h[i + 1], i end
  end
  return 0, nil
end

-- Adds `delta` sockets of `node` to session `s`; returns what the node holds afterwards.
local function hold(s, node, delta)
  local count, i = held_by(s, node)
  local h = s[4]
  if i then
    count = count + delta
    if count <= 0 then
      table.remove(h, i + 1)
      table.remove(h, i)
      return 0
    end
    h[i + 1] = count
    return count
  end
  if delta > 0 then
    table.insert(h, node)
    table.insert(h, delta)
    return delta
  end
  return 0
end

local function holds_any(u, node)
  for _, s in ipairs(u[5]) do
    if held_by(s, node) > 0 then return true end
  end
  return false
end

local function next_seq(prev, now_us)
  if now_us > prev then return now_us end
  return prev + 1
end

local function seen(u, s, now_us)
  if u[2] < now_us then u[2] = now_us end
  if s and s[2] < now_us then s[2] = now_us end
end

local function availability(u)
  if #u[5] == 0 then return 0 end
  if u[6][1] == 2 then return 3 end
  if u[6][1] == 1 then return 2 end
  for _, s in ipairs(u[5]) do
    if s[5] == 1 then return 1 end
  end
  return 2
end

local function platforms(u)
  local bits = 0
  for _, s in ipairs(u[5]) do
    bits = bit.bor(bits, s[7])
  end
  return bits
end

local function signature(u)
  return u[1] .. '|' .. availability(u) .. '|' .. platforms(u) .. '|' .. u[6][2] .. '|' .. u[6][3]
end

-- Records activity of session `sid` at now_us (creating it, on `platform`, if the user has no
-- such session) and moves its end to at least timeout_ms after; returns the session. activity:
-- 0 keepalive (says nothing of the user), 1 active, 2 idle.
local function touch(u, sid, now_us, timeout_ms, platform, activity)
  local now_ms = math.floor(now_us / 1000)
  local s = find(u, sid)
  if not s then
    local active = 1
    if activity == 2 then active = 0 end
    s = {sid, now_us, now_ms + timeout_ms, {}, active, now_ms, platform}
    table.insert(u[5], s)
  elseif activity == 1 then
    s[5], s[6] = 1, now_ms
  elseif activity == 2 then
    s[5] = 0
  end
  seen(u, s, now_us)
  if s[3] < now_ms + timeout_ms then s[3] = now_ms + timeout_ms end
  return s
end

-- Keeps the status in step with the sessions; if the signature changed since `before`, moves
-- seq, the online bitmap and count, and announces the change on `channel` (last_seen stays the
-- last activity; seq orders the event by when it happens). Returns 1 for a change.
local function settle(uid, u, before, now_us, groups, channel)
  local status = 0
  if #u[5] > 0 then status = 1 end
  if u[1] ~= status then
    local was = redis.call('SETBIT', KEYS[3], math.floor(uid / groups), status)
    if status == 1 and was == 0 then
      redis.call('INCR', KEYS[4])
    elseif status == 0 and was == 1 then
      redis.call('DECR', KEYS[4])
    end
    u[1] = status
  end
  if signature(u) == before then return 0 end
  u[3] = next_seq(u[3], now_us)
  local last_seen = u[2]
  if last_seen == 0 then last_seen = now_us end
  -- %d: Lua prints large numbers with 14 significant digits otherwise.
  redis.call('PUBLISH', channel, string.format('%d %d %d %d %d %d %d %d ', uid, status,
    last_seen, u[3], availability(u), platforms(u), u[6][1], u[6][4])
    .. cjson.encode({u[6][2], u[6][3]}))
  return 1
end

-- Arms the user's earliest deadline (a session without holders ending, an active session
-- turning idle, the manual status resetting), unless an entry at or before it is armed
-- already (a later one is re-armed lazily when it fires).
local function arm(uid, u, now_ms, idle_after_ms)
  local deadline = nil
  local function consider(ms)
    if deadline == nil or ms < deadline then deadline = ms end
  end
  for _, s in ipairs(u[5]) do
    if #s[4] == 0 then consider(s[3]) end
    if idle_after_ms > 0 and s[5] == 1 then consider(s[6] + idle_after_ms) end
  end
  if u[6][4] > 0 then consider(u[6][4]) end
  if deadline == nil then
    u[4] = 0
    return
  end
  local slot = math.max(slot_of(deadline), swept(now_ms) + 1)
  if u[4] == 0 or slot < u[4] then
    redis.call('SADD', base .. 'd:' .. slot, uid)
    u[4] = slot
  end
end

-- The state as the caller reads it: changed, status, last_seen, seq, availability, platforms,
-- manual mode, manual expiry, text, emoji, the expiry of the last reset status (0: none), then
-- per session its id, last activity, expiry, whether a socket holds it, and its platform.
local function reply(u, changed)
  local out = {changed, u[1], u[2], u[3], availability(u), platforms(u), u[6][1], u[6][4],
    u[6][2], u[6][3], u[7] or 0}
  for _, s in ipairs(u[5]) do
    table.insert(out, s[1])
    table.insert(out, s[2])
    table.insert(out, s[3])
    if #s[4] > 0 then table.insert(out, 1) else table.insert(out, 0) end
    table.insert(out, s[7])
  end
  return out
end
