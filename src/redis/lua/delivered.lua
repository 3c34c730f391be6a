-- Permits that reached their shards (see `delivered` in the prelude), when no grant
-- call carries the word: ARGV in threes, shard, epoch, seq. Reply: how many counted.
local st = open(true)
if not st or st.need ~= 0 then return 0 end
return delivered(st, 1)
