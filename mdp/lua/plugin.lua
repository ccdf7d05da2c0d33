-- What plug-in processors asked for, from mdp/plugins.py. ARGV[2]: {"recent", "ttl", "records"}, a
-- record (array) being ["pub", channel, type, ts, data JSON] or ["set", key suffix, value, ttl seconds].
-- A publication goes through mdc's publish_signal (mdc/lua/signal.lua, prepended): the channel's own
-- seq and its newest updates, as a service outside the pipeline publishes.
local args = cjson.decode(ARGV[2])
local touched = {}
for _, r in ipairs(args.records) do
  if r[1] == 'pub' then
    local seq_key, recent_key = G .. ':sigseq:' .. r[2], G .. ':sigs:' .. r[2]
    publish_signal(PUB, seq_key, recent_key, G .. ':' .. r[2], r[2], r[3], int(r[4]), ctx.sent, ctx.src, r[5])
    touched[recent_key] = true
  else
    redis.call('SET', G .. ':signal:' .. r[2], r[3], 'EX', r[4])
  end
end
keep_recent(touched, args.recent, args.ttl)
return #args.records
