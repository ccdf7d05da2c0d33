-- Second and minute bars of one MDQ message chunk, folded per symbol by mdp/aggregates.py. Record:
--  1 sym, 2 day, 3 newest second bar JSON|false (starts with {"t":start), 4 its start, 5 minute bars
--  [[start, json, volume], ...] oldest first, 6 stats: [newest bar's end, day open|false, largest day
--  volume|false, newest day vwap|false, newest bar's close, high, high's end, low, low's end, vwap's end].
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  local sym, day = r[1], r[2]
  if r[3] then
    local key = P .. ':bar1s:' .. sym
    if not not_newer(redis.call('GET', key), r[4], 0) then
      redis.call('SET', key, r[3], 'EX', ctx.ttl)
      publish('bars.' .. sym, 'bar.1s', r[4], r[3])
    end
  end
  if #r[5] > 0 then
    local key = P .. ':bars1m:' .. sym
    local averages = P .. ':vavg'
    for _, bar in ipairs(r[5]) do
      local start, json, volume = bar[1], bar[2], bar[3]
      redis.call('ZREMRANGEBYSCORE', key, start, start)  -- a corrected bar replaces its first version
      redis.call('ZADD', key, start, json)
      publish('bars.' .. sym, 'bar.1m', start, json)
      -- volume spike: this minute against the running average of the symbol's minutes
      local state = redis.call('HGET', averages, sym)
      local average, count = 0, 0
      if state then
        local a, c = string.match(state, '^([^,]+),(%d+)$')
        average, count = tonumber(a) or 0, tonumber(c) or 0
      end
      if count >= 5 and volume >= ctx.spike_min and volume > ctx.spike_ratio * average then
        alert('volume_spike', sym, start + 60000,
          ',"volume":' .. int(volume) .. ',"average":' .. int(average))
      end
      average = average + (volume - average) / math.min(count + 1, 20)
      redis.call('HSET', averages, sym, string.format('%.3f,%d', average, count + 1))
    end
    redis.call('ZREMRANGEBYRANK', key, 0, -(ctx.bars + 1))
    redis.call('EXPIRE', key, ctx.ttl)
  end
  local s = r[6]
  if s then
    local doc = stats_load(sym, day)
    if doc then
      local e = s[1]
      stats_seen(doc, e)
      if s[2] then doc.op = s[2] end
      if s[3] and s[3] > doc.agg_volume then doc.agg_volume = s[3] end
      if s[4] and (doc.vt == nil or s[10] > doc.vt or (s[10] == doc.vt and s[4] > doc.vwap)) then
        doc.vwap, doc.vt = s[4], s[10]
      end
      stats_high_low(doc, s[6], s[7], s[8], s[9])
      -- the bar's close is its last trade, just before its end: a trade at or after the end wins
      stats_last(doc, s[5], e - 1, -1)
      stats_save(doc, e)
    end
  end
end
stats_done()
return #records
