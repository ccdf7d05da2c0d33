-- Shared by every MDP script (prepended to it): the call's context, the redelivery guard, and the
-- helpers that publish an update in the MDC envelope with its per-channel sequence number.
--
-- ARGV[1] is the context, JSON: p (key prefix), done (id of this MDQ message chunk, or absent),
-- done_ms, sent (publish time, ms, as text), src (instance, as a JSON string), ttl (seconds a
-- symbol's keys live), and the bounds and alert settings. ARGV[2] is the script's records, JSON.
-- Names are built from P exactly as mdc/names.py builds them.
local ctx = cjson.decode(ARGV[1])
local P = ctx.p

-- A chunk already applied (a redelivery, a retried pipeline) is applied once: the guard is set in
-- the same atomic step as the writes it guards.
if ctx.done and not redis.call('SET', P .. ':done:' .. ctx.done, '1', 'NX', 'PX', ctx.done_ms) then
  return 'duplicate'
end

local function int(x)
  return string.format('%d', x)
end

local function publish(channel, typ, ts, data)
  local seq = redis.call('HINCRBY', P .. ':seq', channel, 1)
  redis.call('PUBLISH', P .. ':' .. channel,
    '{"type":"' .. typ .. '","channel":"' .. channel .. '","seq":' .. seq .. ',"ts":' .. int(ts) ..
    ',"sent":' .. ctx.sent .. ',"src":' .. ctx.src .. ',"data":' .. data .. '}')
end

-- Whether a stored document (JSON starting with {"t":T,"q":Q or {"t":T) is at least as new as (t, q):
-- then an event at (t, q) must not overwrite it.
local function not_newer(raw, t, q)
  if not raw then return false end
  local ot, oq = string.match(raw, '^{"t":(%d+),"q":(%d+)')
  if not ot then
    ot = string.match(raw, '^{"t":(%d+)')
    if not ot then return false end
    oq = 0
  end
  ot, oq = tonumber(ot), tonumber(oq)
  return t < ot or (t == ot and q <= oq)
end

-- Append to a bounded feed (sorted by event time) and publish on its channel.
local function feed(name, typ, t, member)
  local key = P .. ':feed:' .. name
  redis.call('ZADD', key, t, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -(ctx.feed + 1))
  publish(name, typ, t, member)
end

-- An alert, at most one per symbol and kind per cooldown of event time.
local function alert(kind, sym, t, detail)
  local field = sym .. ':' .. kind
  local last = tonumber(redis.call('HGET', P .. ':alerted', field))
  if last and math.abs(t - last) < ctx.cooldown_ms then return end
  redis.call('HSET', P .. ':alerted', field, int(t))
  feed('alerts', 'alert', t, '{"kind":"' .. kind .. '","sym":"' .. sym .. '","t":' .. int(t) .. detail .. '}')
end
