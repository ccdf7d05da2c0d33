-- What several replicas write in one group's transaction (mdp/writes.py). ARGV[2]:
-- {"feeds": [[feed, type, event time, member JSON], ...], "day": trading day or null, "feed_length": n}.
-- A feed entry goes into its bounded sorted set (by event time) and out on its channel with the
-- channel's next seq (shared by every replica, so counted here); the day only ever moves forward.
local args = cjson.decode(ARGV[2])
for _, f in ipairs(args.feeds) do
  local key = G .. ':feed:' .. f[1]
  redis.call('ZADD', key, f[3], f[4])
  redis.call('ZREMRANGEBYRANK', key, 0, -(args.feed_length + 1))
  publish(f[1], f[2], f[3], f[4])
end
if args.day ~= cjson.null and args.day then
  local current = redis.call('GET', G .. ':day')
  if not current or current < args.day then redis.call('SET', G .. ':day', args.day) end
end
return #args.feeds
