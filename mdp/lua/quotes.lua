-- Quotes of one MDQ message chunk: the newest per symbol, from mdp/quotes.py. Record (array):
--  1 sym, 2 t, 3 q, 4 the quote JSON (starts with {"t":T,"q":Q).
local records = cjson.decode(ARGV[2])
local written = 0
for _, r in ipairs(records) do
  local key = P .. ':quote:' .. r[1]
  if not not_newer(redis.call('GET', key), r[2], r[3]) then
    redis.call('SET', key, r[4], 'EX', ctx.ttl)
    publish('quotes.' .. r[1], 'quote', r[2], r[4])
    written = written + 1
  end
end
return written
