-- The grant. ARGV: client, shard, nonce, rank (0 reconnect, 1 start), next rank of the
-- client's queue in this bucket after this shard (-1: none), the client's delivery
-- window (ms: a permit reaches its shard within it of this call being sent), then the
-- client's permits delivered since it last said (threes: shard, epoch, seq; see
-- `delivered` in the prelude).
-- Replies {kind, a, b, c, mc}:
--   {1, epoch, seq, remaining, mc, next_wait, opens}
--                                               granted (token epoch:seq); `opens` 1 when
--                                               its delivery may open Discord's window
--                                               (tell it at once: see `may_open`)
--   {2, wait, is_head, 0, mc}                   ask again after `wait` ms (when the
--                                               bucket frees for the head; for the next
--                                               in line, when to look whether the head
--                                               came back; for the others, a fallback)
--   {3, wait, remaining, 0, mc}                 budget gone until the reset (-1: until
--                                               Discord's word)
--   {4, reason, lost, in, mc}                   no grants until Discord's word:
--                                               1 state missing, 2 new server process;
--                                               `lost` 1 when its loss was noticed `in`
--                                               + the longest window ms ago (a word read
--                                               before a grace after that is
--                                               quarantined: see `sync.lua`)
local client, shard, nonce = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rank, next_rank = tonumber(ARGV[4]), tonumber(ARGV[5])
local window = math.min(tonumber(ARGV[6]), MAXW)
local st, now = open(true)
if not st then
  local lost = tonumber(redis.call('GET', P .. 'lost'))
  if lost then return { 4, 1, 1, lost + MAXW - now, 0 } end
  return { 4, 1, 0, 0, 0 }
end
if st.need ~= 0 then
  if st.lost > 0 then return { 4, st.need, 1, st.lost + MAXW - now, st.mc } end
  return { 4, st.need, 0, 0, st.mc }
end
delivered(st, 7)
local b = shard % st.mc
-- A retried call (its answer was lost): the grant it made, if that grant is still
-- its bucket's latest in this epoch; its shard takes it within `window` from now, so
-- the bucket stays busy for an interval after that. Otherwise (a failover, a later grant since) that
-- grant is void, its unit spent, and this call asks afresh.
local done = redis.call('GET', P .. 'r:' .. nonce)
if done then
  local reply = cjson.decode(done)
  local token = reply[2] .. ':' .. reply[3]
  if reply[2] == st.epoch and redis.call('HGET', BKT, 'g:' .. b) == token then
    reply[7] = renewed(st, b, token, shard, now, window) and 1 or 0
    reply[6] = busy_until(st, b) - now
    return reply
  end
end
local CON, LEASE = P .. 'c:' .. b, P .. 'cl:' .. b
redis.call('HSET', P .. 'cw:' .. b, client, window)

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
-- Pass by heads whose process is gone (its connections closed) or that did not come
-- back within their lease (a silent loss, a stall).
local head, lease
while true do
  head = redis.call('ZRANGE', CON, 0, 0)[1]
  if head == client then break end
  lease = tonumber(redis.call('HGET', LEASE, head)) or 0
  if lease >= now and alive(head) then break end
  drop(b, head)
  promote(st, now, b)
end
if head ~= client then
  -- The next in line looks again when the head should have come back; the others
  -- (and the next in line once that moment passed) when the head's lease ends. A
  -- grant's notification comes first in both cases, unless the head is gone. A lease
  -- that ends this very millisecond is looked at the next one: Redis's clock moves in
  -- whole milliseconds, and a wait of 0 would have the caller ask again at once, and
  -- again, until it moved.
  local wait = math.max(lease - now, 1)
  if redis.call('ZRANGE', CON, 1, 1)[1] == client then
    local check = check_at(st, b, head, lease)
    if now < check then wait = check - now end
  end
  return { 2, math.min(wait, FAR), 0, 0, st.mc }
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
local token = st.epoch .. ':' .. st.seq
-- Logged with its instant (no delivery is earlier) and scored by the latest instant
-- the permit may reach its shard (touches move it on). Spacing counts from delivery:
-- the permit reaches its shard within `window` of this call's sending (so of now), and
-- the next grant comes an interval after that. Undelivered (`u:b`) until its process
-- says otherwise; the grant it follows in the bucket can no longer be delivered.
local member = token .. ':' .. shard .. ':' .. now
redis.call('HSET', STATE, 'rem', st.rem, 'seq', st.seq)
redis.call('HSET', BKT, 'f:' .. b, now + st.iv + window, 'g:' .. b, token, 'm:' .. b, member,
  'u:' .. b, 1)
redis.call('HDEL', BKT, 'p:' .. b)
if st.hold > 0 then redis.call('HSET', BKT, 'h:' .. b, token, 'l:' .. b, now + window + st.hold) end
redis.call('ZADD', LOG, now + window, member)
local opens = may_open(st, b, now, window) and 1 or 0
-- Trimmed at 25 h, but never what the next refill counts.
local keep = now - 90000000
if st.reset_at >= 0 then keep = math.min(keep, st.cfrom) end
redis.call('ZREMRANGEBYSCORE', LOG, '-inf', '(' .. keep)
count_log()
drop(b, client)
if next_rank >= 0 then
  register(next_rank)
  redis.call('HSET', P .. 'cw:' .. b, client, window)
end
promote(st, now, b)
local reply = { 1, st.epoch, st.seq, st.rem, st.mc, busy_until(st, b) - now, opens }
redis.call('SET', P .. 'r:' .. nonce, cjson.encode(reply), 'PX', 120000)
return reply
