-- A process no longer waits for bucket b (its shards there were cancelled).
-- ARGV: client, bucket.
local client, b = ARGV[1], tonumber(ARGV[2])
local st, now = open(true)
if not st then return 0 end
local CON = P .. 'c:' .. b
local head = redis.call('ZRANGE', CON, 0, 0)[1]
if redis.call('ZREM', CON, client) == 0 then return 0 end
redis.call('HDEL', P .. 'cl:' .. b, client)
if head == client then promote(st, now, b) end
return 1
