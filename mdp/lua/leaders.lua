-- The leaderboards, published at most once per interval by whichever replica takes the lock, and
-- only the boards whose rows changed. Everything is read here, in Redis: no round trip per symbol; the
-- rows come from G:rows (written with the rankings), so that no symbol's key is read (another slot).
-- ARGV[2]: [rows per board, lock ms]. Returns the boards published.
local args = cjson.decode(ARGV[2])
local n, lock_ms = args[1], args[2]
if not redis.call('SET', G .. ':leaders:lock', ctx.src, 'NX', 'PX', lock_ms) then return {} end
local day = redis.call('GET', G .. ':day')
if not day then return {} end
local function key(measure) return G .. ':rank:' .. day .. ':' .. measure end
local boards = {
  {'gainers', redis.call('ZREVRANGEBYSCORE', key('change'), '+inf', '(0', 'LIMIT', 0, n)},
  {'losers', redis.call('ZRANGEBYSCORE', key('change'), '-inf', '(0', 'LIMIT', 0, n)},
  {'volume', redis.call('ZREVRANGE', key('volume'), 0, n - 1)},
  {'gappers', redis.call('ZREVRANGE', key('gap'), 0, n - 1)},
}
local published = {}
for _, board in ipairs(boards) do
  local name, symbols = board[1], board[2]
  local rows, newest = {}, 0
  local found = #symbols > 0 and redis.call('HMGET', G .. ':rows', unpack(symbols)) or {}
  for i, sym in ipairs(symbols) do
    local raw = found[i]
    if raw then
      local s = cjson.decode(raw)
      rows[#rows + 1] = cjson.encode({rank = i, sym = sym, last = s.last, change = s.change,
        change_pct = s.change_pct, volume = s.volume, gap_pct = s.gap_pct, open = s.open,
        prev_close = s.prev_close})
      if s.t > newest then newest = s.t end
    end
  end
  local data = '{"board":"' .. name .. '","day":"' .. day .. '","rows":[' .. table.concat(rows, ',') .. ']}'
  local stored = G .. ':board:' .. name
  if redis.call('GET', stored) ~= data then
    redis.call('SET', stored, data, 'EX', 2 * 86400)
    publish('leaders.' .. name, 'leaders', newest, data)
    published[#published + 1] = name
  end
end
return published
