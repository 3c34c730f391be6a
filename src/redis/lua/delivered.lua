-- Permits that reached their shards: for each, ARGV holds shard, epoch, seq. A grant
-- still its bucket's latest in this epoch is no longer undelivered (words and refills
-- count it by its log instant alone, as the core counts a delivery), and if it may
-- have opened Discord's window in this phase (`p:b`, see `may_open`), the window is
-- open: later deliveries no longer move the reset. A grant no longer its bucket's
-- latest says nothing (its word came late: the state stays on the safe side).
-- Reply: how many were taken into account.
local st = open(true)
if not st or st.need ~= 0 then return 0 end
local taken = 0
for i = 1, #ARGV - 2, 3 do
  local shard, epoch = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local b = shard % st.mc
  if epoch == st.epoch and redis.call('HGET', BKT, 'g:' .. b) == ARGV[i + 1] .. ':' .. ARGV[i + 2] then
    redis.call('HDEL', BKT, 'u:' .. b)
    if st.unop == 1 and tonumber(redis.call('HGET', BKT, 'p:' .. b)) == st.ph then
      st.unop = 0
      redis.call('HSET', STATE, 'unop', 0)
    end
    taken = taken + 1
  end
end
return taken
