-- Trades of one group of MDQ messages, folded per symbol by mdp/trades.py. Record (array):
--  1 sym, 2 day, 3 the trades' JSON, sorted by (t, q), newest last, 4 their t, 5 newest t, 6 its q,
--  7 trade count, 8 volume, 9 high|false, 10 its t, 11 low|false, 12 its t, 13 last eligible price|false,
--  14 its t, 15 its q, 16 first eligible price|false, 17 its t, 18 earliest t.
-- Each trade is sent once: the newest is the last trade, the newest ctx.recent go to the recent-trades
-- set, and all of them make the trades.SYM update.
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  local sym, day, trades, times = r[1], r[2], r[3], r[4]
  local n = #trades
  local key = P .. ':trade:' .. sym
  if not not_newer(redis.call('GET', key), r[5], r[6]) then
    redis.call('SET', key, trades[n], 'EX', ctx.ttl)
  end
  key = P .. ':trades:' .. sym
  local args, k = {}, 0
  for i = math.max(1, n - ctx.recent + 1), n do
    args[k + 1], args[k + 2] = times[i], trades[i]
    k = k + 2
  end
  redis.call('ZADD', key, unpack(args))
  redis.call('ZREMRANGEBYRANK', key, 0, -(ctx.recent + 1))
  redis.call('EXPIRE', key, ctx.ttl)
  publish('trades.' .. sym, 'trades', r[5], '[' .. table.concat(trades, ',') .. ']')

  local doc = stats_load(sym, day)
  if doc then
    stats_seen(doc, r[18])
    doc.trades = doc.trades + r[7]
    doc.trade_volume = doc.trade_volume + r[8]
    if r[13] then
      stats_high_low(doc, r[9], r[10], r[11], r[12])
      stats_last(doc, r[13], r[14], r[15])
      if doc.ot == nil or r[17] < doc.ot or (r[17] == doc.ot and r[16] < doc.first) then
        doc.first, doc.ot = r[16], r[17]
      end
    end
    stats_save(doc, r[5])
  end
end
stats_done()
return #records
