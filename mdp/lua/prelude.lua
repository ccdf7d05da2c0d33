-- Prepended to each MDP script: the call's context and the helper that publishes an update in the MDC
-- envelope (mdc/envelope.py: the same format, a test keeps the two equal) with the channel's next seq.
-- The scripts are only for what several replicas write: the leaderboards, the halts and alerts feeds,
-- the trading day and plug-in outputs. A symbol's own state is merged in Python by its one owner.
--
-- ARGV[1] is the context, JSON: p (key prefix), sent (publish time, ms, as text), src (instance, as a
-- JSON string), pub (PUBLISH, or SPUBLISH on a Redis Cluster). ARGV[2] is the script's arguments, JSON.
-- Names are built from P exactly as mdc/names.py builds them: a script touches only the market-wide
-- names, G (P:{P}), one slot on a cluster; KEYS[1] is one of them, so that a cluster routes the call.
local ctx = cjson.decode(ARGV[1])
local P = ctx.p
local G = P .. ':{' .. P .. '}'
local PUB = ctx.pub

local function int(x)
  return string.format('%d', x)
end

local function publish(channel, typ, ts, data)
  local seq = redis.call('HINCRBY', G .. ':seq', channel, 1)
  redis.call(PUB, G .. ':' .. channel,
    '{"type":"' .. typ .. '","channel":"' .. channel .. '","seq":' .. seq .. ',"ts":' .. int(ts) ..
    ',"sent":' .. ctx.sent .. ',"src":' .. ctx.src .. ',"data":' .. data .. '}')
end
