-- LULD bands and halts of one MDQ message chunk: the newest per symbol, from mdp/halts.py. Record:
--  1 sym, 2 t, 3 q, 4 the LULD JSON (starts with {"t":T,"q":Q), 5 halted (boolean).
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  local sym, t, json, halted = r[1], r[2], r[4], r[5]
  local key = P .. ':luld:' .. sym
  if not not_newer(redis.call('GET', key), t, r[3]) then
    redis.call('SET', key, json, 'EX', ctx.ttl)
    publish('luld.' .. sym, 'luld', t, json)
    local was = redis.call('HEXISTS', P .. ':halted', sym) == 1
    if halted then
      redis.call('HSET', P .. ':halted', sym, json)  -- the newest bands of a halted symbol
    elseif was then
      redis.call('HDEL', P .. ':halted', sym)
    end
    if halted ~= was then
      local kind = halted and 'halt' or 'resume'
      feed('halts', kind, t, '{"kind":"' .. kind .. '","sym":"' .. sym .. '","t":' .. int(t) ..
        ',"luld":' .. json .. '}')
      alert(kind, sym, t, '')
    end
  end
end
return #records
