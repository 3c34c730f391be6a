-- Spacing counts from delivery: grant epoch:seq is not yet in its shard's hands, so
-- its bucket stays busy for another interval from now. Fails (0) when the grant is
-- no longer its bucket's latest under the current epoch: the permit is then void.
-- ARGV: shard, epoch, seq. Reply: 1 kept, 0 void.
local shard, token = tonumber(ARGV[1]), ARGV[2] .. ':' .. ARGV[3]
local st, now = open(true)
if not st or st.need ~= 0 then return 0 end
local b = shard % st.mc
if redis.call('HGET', BKT, 'g:' .. b) ~= token then return 0 end
local free = tonumber(redis.call('HGET', BKT, 'f:' .. b)) or 0
redis.call('HSET', BKT, 'f:' .. b, math.max(free, now + st.iv))
return 1
