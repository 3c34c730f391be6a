-- Shared by every script of identify-queue's cluster mode (src/redis/scripts.rs puts
-- it first). KEYS[1] is the namespace prefix `iq:{<namespace>}:`: every key below
-- starts with it, so its hash tag keeps them in one slot. Times are milliseconds of
-- this server's clock (`TIME`): the one clock of the cluster; replies carry durations.
--
-- Keys:
--   state  HASH   the shared budget and settings (fields in `NUMBERS`, plus `runid`)
--   bkt    HASH   per bucket b: f:b free-at, g:b last grant's token, m:b its log member,
--                 u:b set while that grant is not known to be delivered, p:b the phase
--                 in which it may have opened Discord's window (see `may_open`), h:b
--                 holder token and l:b its lease end (hold mode); `gen`, the state's
--                 generation
--   log    ZSET   grants of the last 25 h, member `epoch:seq:shard:granted-at` (the
--                 grant's instant: no delivery is earlier), score the latest instant its
--                 permit may reach its shard (moved on by touches and retries): recent
--                 grants for sync and for the refill; its size is kept in state (`logn`).
--                 After a loss, `lost:<noticed>:<n>:<earliest>` stand for the grants
--                 that may have been made before it (see `sync.lua`)
--   lost   STRING when a script found the state missing or partly lost (ms): Discord's
--                 word must come from a grace and the longest window after it
--   c:b    ZSET   processes waiting for bucket b, lowest score first: rank * 2^40 + seq
--   cl:b   HASH   their leases: when the head must have come back
--   cw:b   HASH   their delivery windows (ms): how long a grant may take to reach them
--   r:n    STRING the reply of a grant with nonce n (a retried call never spends twice)
--   ev     channel  wake-ups only, never needed for safety: `n ...` a bucket's next
--                   process (see `promote`), `s` Discord's word applied, `e <epoch>`
--                   a new server, `e lost` part of the state lost
--   p:c    channel  process c subscribes to it while it lives: its subscriber count
--                   (PUBSUB NUMSUB) drops to 0 the moment its connection closes
local P = KEYS[1]
local STATE, BKT, LOG, EV = P .. 'state', P .. 'bkt', P .. 'log', P .. 'ev'
local RANK = 1099511627776 -- 2^40: a contender's rank above its sequence number
local FAR = 1125899906842624 -- 2^50 ms: "not judged" leases, "never" waits
-- The next in line looks at the head this long (ms) after the head's own window has
-- passed since the bucket freed: the head's call should have arrived by then.
local CHECK = 5
-- The longest delivery window a process uses (`MAX_WINDOW` in round_trip.rs): longer
-- windows are cut to it, so that every grant reaches its shard within it of its call.
local MAXW = 10000
local NUMBERS = { 'mc', 'iv', 'hold', 'total', 'rem', 'reset_at', 'win', 'need', 'quiet',
  'hwm', 'epoch', 'seq', 'cseq', 'rsv', 'slack', 'grace', 'gen', 'logn', 'cfrom', 'unop',
  'ph', 'lost' }

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's identity, and whether it may hold the state at all. The identity is
-- the process (`run_id`) and its replication history (`master_replid`, which changes
-- when a server is promoted, also a demoted and re-promoted one that kept its run_id):
-- a new identity may have lost writes. A server whose eviction policy may drop keys
-- without a TTL (allkeys-*) could lose part of the state: refused (error), so nothing
-- is granted and the error says why.
local function server_id()
  local info = redis.call('INFO', 'server', 'replication', 'memory')
  local policy = string.match(info, 'maxmemory_policy:([%w-]+)') or 'noeviction'
  if policy ~= 'noeviction' and string.sub(policy, 1, 9) ~= 'volatile-' then
    error('identify-queue: maxmemory-policy ' .. policy .. ' may evict the queue state: ' ..
      'use noeviction or a volatile-* policy (its keys have no TTL)')
  end
  return (string.match(info, 'run_id:(%w+)') or '') .. ':' ..
    (string.match(info, 'master_replid:(%w+)') or '')
end

-- A new epoch: unique even when a restart lost the last bump (a millisecond stamp).
local function next_epoch(epoch, now)
  return math.max(epoch + 1, now)
end

-- The log's size after adding or trimming, kept in the state so that a log lost on
-- its own (evicted, deleted) is noticed.
local function count_log()
  local n = redis.call('ZCARD', LOG)
  redis.call('HSET', STATE, 'logn', n)
  return n
end

local function load_state()
  local raw = redis.call('HGETALL', STATE)
  if #raw == 0 then return nil end
  local st = {}
  for i = 1, #raw, 2 do st[raw[i]] = raw[i + 1] end
  for _, field in ipairs(NUMBERS) do st[field] = tonumber(st[field]) or 0 end
  return st
end

-- When a grant of log member `member` (score `score`) was made: its delivery is not
-- earlier. A member written before the instant was part of it: its score less the
-- longest window.
local function granted_at(member, score)
  return tonumber(string.match(member, '^[^:]+:[^:]+:[^:]+:(%-?%d+)$')) or score - MAXW
end

-- The grants of this epoch that may still reach their shards (rules 3.11's undelivered
-- grants): a bucket's latest grant, until its process says it was delivered (`u:b`);
-- an earlier one can no longer be touched, nor its answer retried. Counts those whose
-- log instant is before `from` (or trimmed): the log's count from `from` misses them.
local function undelivered_before(st, from)
  local raw = redis.call('HGETALL', BKT)
  local fields = {}
  for i = 1, #raw, 2 do fields[raw[i]] = raw[i + 1] end
  local n = 0
  for field, _ in pairs(fields) do
    local b = string.match(field, '^u:(%d+)$')
    local member = b and fields['m:' .. b]
    if member and tonumber(string.match(member, '^(%-?%d+):')) == st.epoch then
      local score = tonumber(redis.call('ZSCORE', LOG, member))
      if not score or score < from then n = n + 1 end
    end
  end
  return n
end

-- Discord's reset, at the latest instant `at` it may be: the budget refills to
-- `total` less the grants that may count in Discord's new window: those whose
-- delivery may be from `from` on, and those not delivered yet. One of the delivered may
-- have opened that window, or none did and the next delivery will: the next refill
-- waits for the later of the two (a window and a grace after it: `unop` says the next
-- grants may still push it, see `may_open`) and counts from a window after the
-- earlier (the earliest delivery counted, by its grant's instant), less a grace.
-- Nothing delivered from `from`: the next delivery opens it. Either way a new phase:
-- no delivery before this refill says anything of Discord's new window.
local function refill(st, at, from)
  local near = redis.call('ZCOUNT', LOG, from, '+inf')
  st.rem = math.max(st.total - near - undelivered_before(st, from), 0)
  st.ph = st.ph + 1
  if near == 0 then
    st.reset_at, st.unop = -1, 0
  else
    local counted = redis.call('ZRANGEBYSCORE', LOG, from, '+inf', 'WITHSCORES')
    local first = math.huge
    for i = 1, #counted, 2 do
      first = math.min(first, granted_at(counted[i], tonumber(counted[i + 1])))
    end
    first = math.max(first, from)
    local last = tonumber(redis.call('ZRANGE', LOG, -1, -1, 'WITHSCORES')[2])
    st.reset_at = math.max(at, last) + st.grace + st.win
    st.cfrom = first + st.win - st.grace
    st.unop = 1
  end
end

-- Applies every reset due by `now` (each one that counts a grant counts from a window
-- after the first it counted: it ends when none is left to count).
local function refresh(st, now)
  local changed = false
  while st.reset_at >= 0 and now >= st.reset_at do
    refill(st, st.reset_at, st.cfrom)
    changed = true
  end
  return changed
end

-- Grant `b`'s latest may reach its shard from `now` to `now + window` (granted,
-- touched, or its answer retried). While Discord's window may not be open (no reset
-- placed, or `unop`), that delivery may open it: the reset moves on to a day and a
-- grace after the window at the latest, and the grant is marked with the phase, so
-- that its process's word that it was delivered (`delivered`) settles it. Until a
-- delivery is confirmed, every grant may be the first delivered (the others dropped).
-- Whether it is such a grant (its process then tells its delivery at once).
local function may_open(st, b, now, window)
  local latest = now + window + st.grace + st.win
  if st.reset_at < 0 then
    -- Discord's window opens with a delivery from now on: count from a day after now.
    st.reset_at, st.cfrom, st.unop, st.ph = latest, now + st.win - st.grace, 1, st.ph + 1
  elseif st.unop == 1 then
    st.reset_at = math.max(st.reset_at, latest)
  else
    return false
  end
  redis.call('HSET', STATE, 'reset_at', st.reset_at, 'cfrom', st.cfrom, 'unop', 1, 'ph', st.ph)
  redis.call('HSET', BKT, 'p:' .. b, st.ph)
  return true
end

-- Grant `token` of `shard`, its bucket `b`'s latest, may now reach its shard up to
-- `window` from now (a touch, a retried answer): its log instant moves on (a word
-- applied after it subtracts it), its bucket stays busy for an interval after that,
-- and Discord's reset may move with it (`may_open`, whose answer this is).
local function renewed(st, b, token, shard, now, window)
  local member = redis.call('HGET', BKT, 'm:' .. b) or (token .. ':' .. shard)
  redis.call('ZADD', LOG, 'GT', now + window, member)
  count_log()
  local free = tonumber(redis.call('HGET', BKT, 'f:' .. b)) or 0
  redis.call('HSET', BKT, 'f:' .. b, math.max(free, now + st.iv + window))
  return may_open(st, b, now, window)
end

-- Permits that reached their shards, told by their process after the fact: ARGV from
-- `first` on, in threes (shard, epoch, seq). A grant still its bucket's latest in this
-- epoch is no longer undelivered (words and refills count it by its log interval
-- alone, as the core counts a delivery), and if it may have opened Discord's window
-- in this phase (`p:b`, see `may_open`), the window is open: later grants no longer
-- move the reset. A grant no longer its bucket's latest says nothing (its word came
-- late: the state stays on the safe side). Told twice, the same. How many counted.
local function delivered(st, first)
  local taken = 0
  for i = first, #ARGV - 2, 3 do
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
end

-- The state as of now, or nil when it is missing (Redis restarted empty, or never
-- synced). A new server process (a restart, a failover) may have lost writes: a new
-- epoch, nothing granted until Discord's word (need = 2), no bucket free for an
-- interval (a lost grant may have been the latest). A window that ended refills.
local function open(writes)
  local now = clock()
  local st = load_state()
  if not st then
    -- Missing: a restart or a flush lost it, or no process synced yet. Noted, so that
    -- Discord's word is taken only once no grant made before the loss can arrive
    -- unseen (see `sync.lua`).
    if writes then redis.call('SET', P .. 'lost', now, 'NX') end
    return nil, now
  end
  -- Part of the state lost on its own (an eviction, a deleted key): as good as
  -- missing. Discord's word recreates it.
  if st.gen ~= (tonumber(redis.call('HGET', BKT, 'gen')) or -1)
      or st.logn ~= redis.call('ZCARD', LOG) then
    if writes then
      redis.call('DEL', STATE)
      redis.call('SET', P .. 'lost', now, 'NX')
      redis.call('PUBLISH', EV, 'e lost')
    end
    return nil, now
  end
  if now < st.hwm then now = st.hwm elseif writes then redis.call('HSET', STATE, 'hwm', now) end
  local id = writes and server_id()
  if id and id ~= st.runid then
    st.epoch = next_epoch(st.epoch, now)
    st.need = 2
    st.quiet = math.max(st.quiet, now + st.iv)
    -- The lost writes' grants may still reach their shards for a window: `lost`
    -- quarantines Discord's word (see `sync.lua`).
    st.lost = now
    redis.call('HSET', STATE, 'runid', id, 'epoch', st.epoch, 'need', 2, 'quiet', st.quiet,
      'lost', st.lost)
    redis.call('PUBLISH', EV, 'e ' .. st.epoch)
  end
  if refresh(st, now) and writes then
    redis.call('HSET', STATE, 'rem', st.rem, 'reset_at', st.reset_at, 'cfrom', st.cfrom,
      'unop', st.unop, 'ph', st.ph)
  end
  return st, now
end

-- When bucket b frees: its spacing, the quiet period, and a live hold.
local function busy_until(st, b)
  local busy = math.max(st.quiet, tonumber(redis.call('HGET', BKT, 'f:' .. b)) or 0)
  if redis.call('HEXISTS', BKT, 'h:' .. b) == 1 then
    busy = math.max(busy, tonumber(redis.call('HGET', BKT, 'l:' .. b)) or 0)
  end
  return busy
end

-- Whether process c still has its subscription open: a process whose connections
-- closed (killed: its kernel closed its sockets) is passed at once. A silent loss
-- (host down, partition) keeps its count until Redis's keepalive notices: the lease
-- is the fallback for that.
local function alive(c)
  return tonumber(redis.call('PUBSUB', 'NUMSUB', P .. 'p:' .. c)[2]) > 0
end

-- The delivery window of contender c of bucket b (ms).
local function window_of(b, c)
  return tonumber(redis.call('HGET', P .. 'cw:' .. b, c)) or 0
end

-- Contender c leaves bucket b's line.
local function drop(b, c)
  redis.call('ZREM', P .. 'c:' .. b, c)
  redis.call('HDEL', P .. 'cl:' .. b, c)
  redis.call('HDEL', P .. 'cw:' .. b, c)
end

-- When the next in line should look whether the head came back: once the head was
-- due (its lease less the slack: when the bucket freed, or when it was promoted) and
-- its call had time to arrive (its window covers its round trip). A live head that
-- is late keeps its lease.
local function check_at(st, b, head, lease)
  return lease - st.slack + window_of(b, head) + CHECK
end

-- The first contender of bucket b becomes its head: it must come back (ask again)
-- within `slack` of the bucket freeing, or the others pass it by. Tells it when, and
-- tells the next in line when to look whether it came back:
-- `n <bucket> <head> <wait> <second> <check>` (second and check absent when alone).
local function promote(st, now, b)
  local first = redis.call('ZRANGE', P .. 'c:' .. b, 0, 1)
  local head, second = first[1], first[2]
  if head then
    local busy = busy_until(st, b)
    local lease = math.max(busy, now) + st.slack
    redis.call('HSET', P .. 'cl:' .. b, head, lease)
    local note = 'n ' .. b .. ' ' .. head .. ' ' .. math.max(busy - now, 0)
    if second then note = note .. ' ' .. second .. ' ' .. (check_at(st, b, head, lease) - now) end
    redis.call('PUBLISH', EV, note)
  end
end
