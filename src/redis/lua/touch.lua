-- Spacing counts from delivery: grant epoch:seq is not yet in its shard's hands, so
-- its bucket stays busy until an interval after it is: the permit reaches its shard
-- within `window` of this call's sending, if this call succeeds. Fails (0) when the
-- grant is no longer its bucket's latest under the current epoch: the permit is
-- then void (its unit spent), and its shard asks again.
-- ARGV: shard, epoch, seq, window (ms). Reply: 1 kept, 2 kept and its delivery may
-- open Discord's window (tell it at once: see `may_open`), 0 void.
local shard, token = tonumber(ARGV[1]), ARGV[2] .. ':' .. ARGV[3]
local window = math.min(tonumber(ARGV[4]) or 0, MAXW)
local st, now = open(true)
if not st or st.need ~= 0 then return 0 end
-- A grant of an earlier epoch is void, even if its record survived a failover.
if tonumber(ARGV[2]) ~= st.epoch then return 0 end
local b = shard % st.mc
if redis.call('HGET', BKT, 'g:' .. b) ~= token then return 0 end
local opens = renewed(st, b, token, shard, now, window)
-- Hold mode: the hold counts from delivery too.
if redis.call('HGET', BKT, 'h:' .. b) == token then
  local lease = tonumber(redis.call('HGET', BKT, 'l:' .. b)) or 0
  redis.call('HSET', BKT, 'l:' .. b, math.max(lease, now + window + st.hold))
end
if opens then return 2 end
return 1
