-- What a plug-in processor asked for, from mdp/plugins.py. Record (array):
--  ["pub", channel, type, ts, data JSON] or ["set", key suffix, value, ttl seconds].
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  if r[1] == 'pub' then
    publish(r[2], r[3], r[4], r[5])
  else
    redis.call('SET', P .. ':signal:' .. r[2], r[3], 'EX', r[4])
  end
end
return #records
