-- The grant. ARGV: client, shard, nonce, rank (0 reconnect, 1 start), next rank of the
-- client's queue in this bucket after this shard (-1: none).
-- Replies {kind, a, b, c, mc}:
--   {1, epoch, seq, remaining, mc, next_wait}  granted (token epoch:seq)
--   {2, wait, is_head, 0, mc}                   ask again after `wait` ms (the head's
--                                               lease end, for the others: a fallback)
--   {3, wait, remaining, 0, mc}                 budget gone until the reset (-1: until
--                                               Discord's word)
--   {4, reason, 0, 0, mc}                       no grants until Discord's word:
--                                               1 state missing, 2 new server process
local client, shard, nonce = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rank, next_rank = tonumber(ARGV[4]), tonumber(ARGV[5])
local st, now = open(true)
if not st then return { 4, 1, 0, 0, 0 } end
if st.need ~= 0 then return { 4, st.need, 0, 0, st.mc } end
local b = shard % st.mc
-- A retried call (its answer was lost): the grant it made, if that grant is still
-- its bucket's latest in this epoch; its shard takes it now, so the bucket stays
-- busy for an interval from now. Otherwise (a failover, a later grant since) that
-- grant is void, its unit spent, and this call asks afresh.
local done = redis.call('GET', P .. 'r:' .. nonce)
if done then
  local reply = cjson.decode(done)
  if reply[2] == st.epoch and redis.call('HGET', BKT, 'g:' .. b) == reply[2] .. ':' .. reply[3] then
    local free = tonumber(redis.call('HGET', BKT, 'f:' .. b)) or 0
    redis.call('HSET', BKT, 'f:' .. b, math.max(free, now + st.iv))
    reply[6] = busy_until(st, b) - now
    return reply
  end
end
local CON, LEASE = P .. 'c:' .. b, P .. 'cl:' .. b

local function register(r)
  local score = redis.call('ZSCORE', CON, client)
  if score then
    local better = r * RANK + math.fmod(tonumber(score), RANK)
    if better < tonumber(score) then redis.call('ZADD', CON, better, client) end
  else
    st.cseq = st.cseq + 1
    redis.call('HSET', STATE, 'cseq', st.cseq)
    redis.call('ZADD', CON, r * RANK + st.cseq, client)
    redis.call('HSET', LEASE, client, FAR)
  end
end

register(rank)
local busy = busy_until(st, b)
-- Pass by heads that did not come back in time (their process died or stalled).
local head, lease
while true do
  head = redis.call('ZRANGE', CON, 0, 0)[1]
  lease = tonumber(redis.call('HGET', LEASE, head)) or 0
  if head == client or lease >= now then break end
  redis.call('ZREM', CON, head)
  redis.call('HDEL', LEASE, head)
  promote(st, now, b)
end
if head ~= client then
  return { 2, math.min(lease - now, FAR), 0, 0, st.mc }
end
if now < busy then
  redis.call('HSET', LEASE, client, busy + st.slack)
  return { 2, busy - now, 1, 0, st.mc }
end
if st.rem <= st.rsv then
  -- The head comes back at the reset, or, without one, when Discord's word arrives
  -- (every process hears of it): until then, its place is kept only for its grace.
  local wait = -1
  if st.reset_at >= 0 then wait = st.reset_at - now end
  redis.call('HSET', LEASE, client, now + math.max(wait, 0) + st.slack)
  return { 3, wait, st.rem, 0, st.mc }
end

st.rem = st.rem - 1
st.seq = st.seq + 1
if st.reset_at < 0 then st.reset_at = now + st.win end
redis.call('HSET', STATE, 'rem', st.rem, 'seq', st.seq, 'reset_at', st.reset_at)
local token = st.epoch .. ':' .. st.seq
redis.call('HSET', BKT, 'f:' .. b, now + st.iv, 'g:' .. b, token)
if st.hold > 0 then redis.call('HSET', BKT, 'h:' .. b, token, 'l:' .. b, now + st.hold) end
redis.call('ZADD', LOG, now, token .. ':' .. shard)
redis.call('ZREMRANGEBYSCORE', LOG, '-inf', now - 90000000)
redis.call('ZREM', CON, client)
redis.call('HDEL', LEASE, client)
if next_rank >= 0 then register(next_rank) end
promote(st, now, b)
local reply = { 1, st.epoch, st.seq, st.rem, st.mc, busy_until(st, b) - now }
redis.call('SET', P .. 'r:' .. nonce, cjson.encode(reply), 'PX', 120000)
return reply
