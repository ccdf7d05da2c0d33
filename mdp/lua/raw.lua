-- Raw events kept briefly for inspection (imbalances, values, anything unknown). Record:
--  1 event type, 2 [event JSON, ...] oldest first.
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  local key = P .. ':raw:' .. r[1]
  for i = 1, #r[2], 1000 do
    redis.call('LPUSH', key, unpack(r[2], i, math.min(i + 999, #r[2])))
  end
  redis.call('LTRIM', key, 0, ctx.raw - 1)
  redis.call('EXPIRE', key, ctx.raw_ttl)
end
return #records
