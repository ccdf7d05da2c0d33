-- What plug-in processors asked for, from mdp/plugins.py. ARGV[2]: {"recent", "ttl", "records"}, a
-- record (array) being ["pub", channel, type, ts, data JSON] or ["set", key suffix, value, ttl seconds].
-- A publication goes through mdc's publish_signal (mdc/lua/signal.lua, prepended): the channel's own
-- seq and its newest updates, as a service outside the pipeline publishes.
local args = cjson.decode(ARGV[2])
local touched = {}
for _, r in ipairs(args.records) do
  if r[1] == 'pub' then
    local seq_key, recent_key = P .. ':sigseq:' .. r[2], P .. ':sigs:' .. r[2]
    if redis.call('EXISTS', seq_key) == 0 then
      -- a channel whose seq an older version kept in P:seq goes on from it: a client never sees it go back
      local before = redis.call('HGET', P .. ':seq', r[2])
      if before then
        redis.call('SET', seq_key, before)
        redis.call('HDEL', P .. ':seq', r[2])
      end
    end
    publish_signal(seq_key, recent_key, P .. ':' .. r[2], r[2], r[3], int(r[4]), ctx.sent, ctx.src, r[5])
    touched[recent_key] = true
  else
    redis.call('SET', P .. ':signal:' .. r[2], r[3], 'EX', r[4])
  end
end
keep_recent(touched, args.recent, args.ttl)
return #args.records
