-- Publishing on signals.* channels, declared once for every publisher: mdc/publisher.py (a service
-- outside the pipeline) and mdp/lua/plugin.lua (a plug-in processor) both prepend this file.
-- A call is atomic: each channel's seq (INCR: it never goes back, whoever publishes), the newest updates
-- kept for a subscriber's snapshot, and the PUBLISH (verb: SPUBLISH on a Redis Cluster). The envelope is
-- mdc/envelope.py's format (a test keeps the two equal). ts is the decimal digits, sent too; src and data
-- are JSON values.
local function publish_signal(verb, seq_key, recent_key, redis_channel, channel, typ, ts, sent, src, data)
  local seq = redis.call('INCR', seq_key)
  local envelope = '{"type":"' .. typ .. '","channel":"' .. channel .. '","seq":' .. seq .. ',"ts":' .. ts ..
    ',"sent":' .. sent .. ',"src":' .. src .. ',"data":' .. data .. '}'
  redis.call('LPUSH', recent_key, envelope)
  redis.call(verb, redis_channel, envelope)
  return seq
end

-- Once per channel of a call, after its publications: the newest `recent` kept, for `ttl` seconds.
local function keep_recent(recent_keys, recent, ttl)
  for key in pairs(recent_keys) do
    redis.call('LTRIM', key, 0, recent - 1)
    redis.call('EXPIRE', key, ttl)
  end
end
