-- Discord's word: a fresh session_start_limit, read `age` ms ago. It sets the budget,
-- less the grants that may reach Discord after the word was read: those whose permit
-- reached its shard within `grace` before the read, and those not delivered yet
-- (Discord may not have counted them: they are subtracted twice rather than counted as
-- available twice). Discord computed `reset_after` at some instant between the read
-- and now, so its reset is `reset_after` from now at the latest: the budget refills
-- there, and that refill subtracts the grants from Discord's earliest reset (the read
-- plus `reset_after`) less the grace on (see `open`). Creates the state when missing
-- (or partly lost).
--
-- After a loss (the state missing or partly lost where a process had used it, a new
-- server process), the grants made before it are unknown: each may reach its shard up
-- to the longest window after the loss was noticed, and Discord up to a grace after
-- that (the quarantine). A word read before then is applied as if those grants were
-- logged: the most the buckets can have made in that time (every bucket, one per
-- interval) are written to the log as delivered within the quarantine, so that this
-- word, every word read before the quarantine ends, and a refill near them count
-- them, and a window the word says is not open may have been opened by one of them.
-- A word of any age is taken (the core refuses one older than an hour): the log is
-- kept 25 h, and a word older than a day places its reset in the past, where the
-- refill counts the whole log.
-- A seed (`seed` 1: a limit that is not Discord's word, such as a server's static
-- flags) only creates a missing state: a namespace with state is the bot's, spent by
-- every process of it, and is taken as it is (its reply says what it holds).
-- ARGV: total, remaining, reset_after (-1: never), max_concurrency, interval, hold,
-- grace, window, reserve, slack, age, seed, known (1: the calling process saw this
-- namespace's state before, so a missing state was lost, not never made). Reply: {remaining, reset_in (-1: none),
-- epoch, mc}.
local total, remaining, reset_after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local mc, iv, hold, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local win, rsv, slack = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local age = tonumber(ARGV[11]) or 0
local seed = ARGV[12] == '1'
local now = clock()
local id = server_id()
local st = load_state()
local lost = tonumber(redis.call('GET', P .. 'lost'))
if st and (st.gen ~= (tonumber(redis.call('HGET', BKT, 'gen')) or -1)
    or st.logn ~= redis.call('ZCARD', LOG)) then
  -- Partly lost (evicted, deleted): as good as missing.
  st = nil
  lost = lost or now
end
-- Missing, for a process that saw it before: lost (Redis restarted empty, a flush), and
-- no script noticed it before this one. The grants made before the loss are unknown,
-- and a word read before it cannot count those that arrived after its read: the loss
-- is noticed now, and the word quarantined as after any loss.
if not st and ARGV[13] == '1' then lost = lost or now end
if seed and st then
  local reset_in = -1
  if st.reset_at >= 0 then reset_in = st.reset_at - math.max(now, st.hwm) end
  return { st.rem, reset_in, st.epoch, st.mc }
end
local epoch, quiet, gen
if not st then
  -- Missing: its grants are unknown, the latest may have been a moment ago.
  epoch = now
  quiet = now + iv
  gen = now
else
  gen = st.gen
  now = math.max(now, st.hwm)
  epoch = st.epoch
  quiet = math.max(st.quiet, now)
  if st.need ~= 0 or st.runid ~= id then
    if st.runid ~= id then epoch = next_epoch(epoch, now) end
    quiet = math.max(quiet, now + iv)
    -- The loss was noticed when a script first saw the new server, or now.
    if st.need ~= 0 and st.lost > 0 then lost = st.lost end
    if st.runid ~= id then lost = now end
  end
  if st.mc ~= mc then
    -- Re-keyed buckets: none is free before every recent grant and live hold has
    -- aged, whichever new bucket it maps to. Their grants can no longer be touched:
    -- the log instant of each is final.
    local raw = redis.call('HGETALL', BKT)
    for i = 1, #raw, 2 do
      local kind = string.sub(raw[i], 1, 1)
      if kind == 'f' then quiet = math.max(quiet, tonumber(raw[i + 1]) or 0) end
      if kind == 'l' then quiet = math.max(quiet, tonumber(raw[i + 1]) or 0) end
    end
    redis.call('DEL', BKT)
    for b = 0, st.mc - 1 do redis.call('DEL', P .. 'c:' .. b, P .. 'cl:' .. b, P .. 'cw:' .. b) end
  end
end
local read = now - age
if lost then
  -- The quarantine's unseen grants (at most `total`: no word counts more), each
  -- granted from a window and a grace before the read (a delivery before that is in
  -- the word) to when the loss was noticed, so delivered by a window after that.
  local quarantine = lost + MAXW + grace
  if read < quarantine then
    local unseen = math.min(mc * (math.floor((quarantine - read) / iv) + 1), total)
    local earliest = read - grace - MAXW
    for i = 1, unseen do
      redis.call('ZADD', LOG, lost + MAXW, 'lost:' .. lost .. ':' .. i .. ':' .. earliest)
    end
  end
end
local budget = { total = total, grace = grace, win = win, rem = 0, reset_at = -1, cfrom = 0,
  unop = 0, epoch = epoch, ph = (st and st.ph or 0) + 1 }
-- (A grant of an earlier epoch can no longer be touched: its log instant is final.)
local recent = redis.call('ZCOUNT', LOG, read - grace, '+inf') + undelivered_before(budget, read - grace)
if reset_after < 0 then
  -- Never: nothing to refill, nothing the log must keep for a refill.
  budget.rem, budget.reset_at = math.max(remaining - recent, 0), now + FAR
  budget.cfrom = budget.reset_at
elseif remaining >= total then
  -- Discord counted nothing: its window is not open, and `reset_after` says nothing.
  -- That is a refill now (the latest instant Discord may have computed the word),
  -- counting from the read.
  refill(budget, now, read - grace)
else
  budget.rem, budget.reset_at = math.max(remaining - recent, 0), now + reset_after
  budget.cfrom = read + reset_after - grace
  refresh(budget, now)
end
local rem, reset_at = budget.rem, budget.reset_at
redis.call('HSET', STATE, 'mc', mc, 'iv', iv, 'hold', hold, 'total', total, 'rem', rem,
  'reset_at', reset_at, 'cfrom', budget.cfrom, 'unop', budget.unop, 'win', win, 'need', 0,
  'quiet', quiet, 'hwm', now,
  'runid', id, 'epoch', epoch, 'rsv', rsv, 'slack', slack, 'grace', grace, 'gen', gen,
  'ph', budget.ph, 'lost', 0)
redis.call('DEL', P .. 'lost')
if not st then redis.call('HSET', STATE, 'seq', 0, 'cseq', 0) end
redis.call('HSET', BKT, 'gen', gen)
count_log()
redis.call('PUBLISH', EV, 's')
local reset_in = -1
if reset_at >= 0 then reset_in = reset_at - now end
return { rem, reset_in, epoch, mc }
