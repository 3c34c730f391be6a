-- A process no longer waits for bucket b (its shards there were cancelled).
-- ARGV: client, bucket.
local client, b = ARGV[1], tonumber(ARGV[2])
local st, now = open(true)
if not st then return 0 end
local CON = P .. 'c:' .. b
local head = redis.call('ZRANGE', CON, 0, 0)[1]
if not redis.call('ZSCORE', CON, client) then return 0 end
drop(b, client)
if head == client then promote(st, now, b) end
return 1
