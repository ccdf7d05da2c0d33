-- Trades of one MDQ message chunk, folded per symbol by mdp/trades.py. Record (array):
--  1 sym, 2 day, 3 newest trade JSON, 4 its t, 5 its q, 6 recent members [[t, json], ...] (newest last,
--  at most MDC_RECENT_TRADES), 7 trade count, 8 volume, 9 high|false, 10 its t, 11 low|false, 12 its t,
--  13 last eligible price|false, 14 its t, 15 its q, 16 first eligible price|false, 17 its t,
--  18 newest t, 19 the batch's trades as a JSON array (the update of trades.SYM), 20 earliest t.
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  local sym, day = r[1], r[2]
  local key = P .. ':trade:' .. sym
  if not not_newer(redis.call('GET', key), r[4], r[5]) then
    redis.call('SET', key, r[3], 'EX', ctx.ttl)
  end
  key = P .. ':trades:' .. sym
  local args = {}
  for i, m in ipairs(r[6]) do
    args[2 * i - 1], args[2 * i] = m[1], m[2]
  end
  redis.call('ZADD', key, unpack(args))
  redis.call('ZREMRANGEBYRANK', key, 0, -(ctx.recent + 1))
  redis.call('EXPIRE', key, ctx.ttl)
  publish('trades.' .. sym, 'trades', r[18], r[19])

  local doc = stats_load(sym, day)
  if doc then
    stats_seen(doc, r[20])
    doc.trades = doc.trades + r[7]
    doc.trade_volume = doc.trade_volume + r[8]
    if r[13] then
      stats_high_low(doc, r[9], r[10], r[11], r[12])
      stats_last(doc, r[13], r[14], r[15])
      if doc.ot == nil or r[17] < doc.ot or (r[17] == doc.ot and r[16] < doc.first) then
        doc.first, doc.ot = r[16], r[17]
      end
    end
    stats_save(doc, r[18])
  end
end
stats_done()
return #records
