-- Day stats, shared by the trades and aggregates scripts: load (with the day reset), merge, save.
-- Every merge is commutative (sums, max, min, "newest wins" by event time), and the redelivery guard
-- makes sums idempotent, so shuffled or repeated delivery gives the same document.

local function round(x, digits)
  local m = 10 ^ digits
  return math.floor(x * m + 0.5) / m
end

-- The stats document of sym for trading day `day`, or nil when the event belongs to an older day.
-- A new day starts from nothing but the previous close (the last price of the previous day seen, or
-- the optional prevclose hash).
local function stats_load(sym, day)
  local raw = redis.call('GET', P .. ':stats:' .. sym)
  local doc = raw and cjson.decode(raw)
  if doc and doc.day > day then return nil end
  if not doc or doc.day < day then
    local prev = doc and (doc.last or doc.prev_close)
    if not prev then prev = tonumber(redis.call('HGET', P .. ':prevclose', sym)) end
    doc = {sym = sym, day = day, t = 0, volume = 0, trade_volume = 0, agg_volume = 0, trades = 0,
           prev_close = prev}
  end
  return doc
end

-- The day's first event time: new highs and lows alert only once the day has warmed up.
local function stats_seen(doc, t)
  if doc.t0 == nil or t < doc.t0 then doc.t0 = t end
end

local function warm(doc, t)
  return t - doc.t0 >= ctx.warmup_ms
end

local function stats_high_low(doc, hi, hi_t, lo, lo_t)
  if hi and (doc.high == nil or hi > doc.high) then
    if doc.high ~= nil and warm(doc, hi_t) then
      alert('new_high', doc.sym, hi_t, ',"price":' .. hi .. ',"prev":' .. doc.high)
    end
    doc.high = hi
  end
  if lo and (doc.low == nil or lo < doc.low) then
    if doc.low ~= nil and warm(doc, lo_t) then
      alert('new_low', doc.sym, lo_t, ',"price":' .. lo .. ',"prev":' .. doc.low)
    end
    doc.low = lo
  end
end

-- The last price, newest by (t, q).
local function stats_last(doc, p, t, q)
  if doc.lt == nil or t > doc.lt or (t == doc.lt and q > doc.lq) then
    doc.last, doc.lt, doc.lq = p, t, q
  end
end

local ranked = {}
local function rank(day, measure, score, sym)
  local key = P .. ':rank:' .. day .. ':' .. measure
  redis.call('ZADD', key, score, sym)
  if not ranked[key] then
    ranked[key] = true
    redis.call('EXPIRE', key, 2 * 86400)
  end
end

local newest_day = nil
local function stats_save(doc, t)
  if t > doc.t then doc.t = t end
  doc.volume = math.max(doc.trade_volume, doc.agg_volume)
  doc.open = doc.op or doc.first  -- the vendor's day open wins over the first trade seen
  local ref = doc.prev_close or doc.open
  if doc.last and ref and ref > 0 then
    doc.change = round(doc.last - ref, 6)
    doc.change_pct = round((doc.last / ref - 1) * 100, 4)
  end
  if doc.open and doc.prev_close and doc.prev_close > 0 then
    doc.gap_pct = round((doc.open / doc.prev_close - 1) * 100, 4)
  end
  local encoded = cjson.encode(doc)
  redis.call('SET', P .. ':stats:' .. doc.sym, encoded, 'EX', ctx.ttl)
  if doc.change_pct then rank(doc.day, 'change', doc.change_pct, doc.sym) end
  rank(doc.day, 'volume', doc.volume, doc.sym)
  if doc.gap_pct then rank(doc.day, 'gap', math.abs(doc.gap_pct), doc.sym) end
  publish('stats.' .. doc.sym, 'stats', doc.t, encoded)
  if newest_day == nil or doc.day > newest_day then newest_day = doc.day end
end

local function stats_done()
  if newest_day then
    local current = redis.call('GET', P .. ':day')
    if not current or current < newest_day then redis.call('SET', P .. ':day', newest_day) end
  end
end
