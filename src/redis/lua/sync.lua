-- Discord's word: a fresh session_start_limit, read `age` ms ago. It sets the budget,
-- less the grants that may reach Discord after the word was read: those whose permit
-- reached its shard within `grace` before the read, and those not delivered yet
-- (Discord may not have counted them: they are subtracted twice rather than counted as
-- available twice). Discord's reset is at `reset_after` from the read, so at the latest
-- that from now less the age; the refill then subtracts the grants near it (see
-- `open`). Creates the state when missing (or partly lost).
--
-- After a loss (the state missing or partly lost where a process had used it, a new
-- server process), the grants made before it are unknown: each may reach its shard up
-- to the longest window after the loss was noticed, and Discord up to a grace after
-- that. A word read before then is quarantined: it is applied less the most grants the
-- buckets can have made in that time (every bucket, one per interval), and a window it
-- says is not open may have been opened by one of them. The quarantine lasts until a
-- word read after it: every word until then is applied so.
-- ARGV: total, remaining, reset_after (-1: never), max_concurrency, interval, hold,
-- grace, window, reserve, slack, age. Reply: {remaining, reset_in (-1: none), epoch, mc}.
local total, remaining, reset_after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local mc, iv, hold, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local win, rsv, slack = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local age = tonumber(ARGV[11]) or 0
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
    if st.runid ~= id then lost = now end
  end
  -- A loss noticed before, whose quarantine may not be over.
  if not lost and st.lost > 0 then lost = st.lost end
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
-- The quarantine: grants made before the loss (at most one per bucket per interval,
-- each within the longest window of its delivery) that may reach Discord after `read`
-- less the grace, which Redis no longer knows.
local unseen, quarantine = 0, nil
if lost then
  quarantine = lost + MAXW + grace
  if read < quarantine then unseen = mc * (math.floor((quarantine - read) / iv) + 1) end
end
local budget = { total = total, grace = grace, win = win, rem = 0, reset_at = -1, cfrom = 0,
  unop = 0, epoch = epoch, ph = (st and st.ph or 0) + 1 }
-- (A grant of an earlier epoch can no longer be touched: its log instant is final.)
local recent = redis.call('ZCOUNT', LOG, read - grace, '+inf') + undelivered_before(budget, read - grace)
if reset_after < 0 then
  -- Never: nothing to refill, nothing the log must keep for a refill.
  budget.rem, budget.reset_at = math.max(remaining - recent - unseen, 0), now + FAR
  budget.cfrom = budget.reset_at
elseif remaining >= total then
  -- Discord counted nothing: its window is not open, and `reset_after` says nothing.
  -- That is a refill at the read.
  refill(budget, read, read - grace)
  budget.rem = math.max(budget.rem - unseen, 0)
  if unseen > 0 then
    -- An unseen grant may open Discord's window, from the read to a grace after the
    -- quarantine: as a refill that counted grants there.
    if budget.reset_at < 0 then budget.cfrom = read + win - grace end
    budget.reset_at = math.max(budget.reset_at, quarantine + grace + win)
    budget.cfrom = math.min(budget.cfrom, read + win - grace)
    budget.unop = 1
  end
else
  budget.rem, budget.reset_at = math.max(remaining - recent - unseen, 0), read + reset_after
  budget.cfrom = budget.reset_at - grace
  refresh(budget, now)
end
local rem, reset_at = budget.rem, budget.reset_at
redis.call('HSET', STATE, 'mc', mc, 'iv', iv, 'hold', hold, 'total', total, 'rem', rem,
  'reset_at', reset_at, 'cfrom', budget.cfrom, 'unop', budget.unop, 'win', win, 'need', 0,
  'quiet', quiet, 'hwm', now,
  'runid', id, 'epoch', epoch, 'rsv', rsv, 'slack', slack, 'grace', grace, 'gen', gen,
  'ph', budget.ph, 'lost', unseen > 0 and lost or 0)
redis.call('DEL', P .. 'lost')
if not st then redis.call('HSET', STATE, 'seq', 0, 'cseq', 0) end
redis.call('HSET', BKT, 'gen', gen)
count_log()
redis.call('PUBLISH', EV, 's')
local reset_in = -1
if reset_at >= 0 then reset_in = reset_at - now end
return { rem, reset_in, epoch, mc }
