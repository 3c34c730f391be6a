-- Hold mode: the shard of grant epoch:seq got READY (or failed). Frees its bucket's
-- hold only if that grant still holds it (a stale permit cannot free a newer hold).
-- ARGV: shard, epoch, seq. Reply: 1 released, 0 not holding.
local shard, token = tonumber(ARGV[1]), ARGV[2] .. ':' .. ARGV[3]
local st, now = open(true)
if not st then return 0 end
local b = shard % st.mc
if redis.call('HGET', BKT, 'h:' .. b) ~= token then return 0 end
redis.call('HDEL', BKT, 'h:' .. b, 'l:' .. b)
promote(st, now, b)
return 1
