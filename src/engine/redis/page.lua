-- Online users of one group from a bit on: ARGV = first bit, limit, groups, group. Returns up
-- to limit user ids in increasing order (bit b is user b * groups + group).
local first, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local groups, group = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local length = redis.call('STRLEN', KEYS[3])
local byte = math.floor(first / 8)
local CHUNK = 4096
while byte < length and #out < limit do
  local chunk = redis.call('GETRANGE', KEYS[3], byte, byte + CHUNK - 1)
  for i = 1, #chunk do
    local value = string.byte(chunk, i)
    if value ~= 0 then
      for k = 0, 7 do
        local index = (byte + i - 1) * 8 + k
        if index >= first and bit.band(value, bit.rshift(128, k)) ~= 0 then
          table.insert(out, index * groups + group)
          if #out >= limit then return out end
        end
      end
    end
  end
  byte = byte + CHUNK
end
return out
