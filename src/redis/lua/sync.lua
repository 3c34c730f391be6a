-- Discord's word: a fresh session_start_limit, read `age` ms ago. It sets the budget,
-- less the grants that reached their shards within `grace` before the word was read
-- (Discord may not have counted them yet: they are subtracted twice rather than
-- counted as available twice). Discord's reset is at `reset_after` from the read, so
-- at the latest that from now less the age; the refill then subtracts the grants
-- near it (see `open`). Creates the state when missing (or partly lost).
-- ARGV: total, remaining, reset_after (-1: never), max_concurrency, interval, hold,
-- grace, window, reserve, slack, age. Reply: {remaining, reset_in (-1: none), epoch, mc}.
local total, remaining, reset_after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local mc, iv, hold, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local win, rsv, slack = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local age = tonumber(ARGV[11]) or 0
local now = clock()
local id = server_id()
local st = load_state()
if st and (st.gen ~= (tonumber(redis.call('HGET', BKT, 'gen')) or -1)
    or st.logn ~= redis.call('ZCARD', LOG)) then
  -- Partly lost (evicted, deleted): as good as missing.
  st = nil
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
  end
  if st.mc ~= mc then
    -- Re-keyed buckets: none is free before every recent grant and live hold has
    -- aged, whichever new bucket it maps to.
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
local recent = redis.call('ZCOUNT', LOG, read - grace, '+inf')
local budget = { total = total, grace = grace, win = win, rem = 0, reset_at = -1, cfrom = 0,
  unop = 0 }
if reset_after < 0 then
  budget.rem, budget.reset_at = math.max(remaining - recent, 0), now + FAR
elseif remaining >= total then
  -- Discord counted nothing: its window is not open, and `reset_after` says nothing.
  -- That is a refill at the read.
  refill(budget, read, read - grace)
else
  budget.rem, budget.reset_at = math.max(remaining - recent, 0), read + reset_after
  budget.cfrom = budget.reset_at - grace
  refresh(budget, now)
end
local rem, reset_at = budget.rem, budget.reset_at
redis.call('HSET', STATE, 'mc', mc, 'iv', iv, 'hold', hold, 'total', total, 'rem', rem,
  'reset_at', reset_at, 'cfrom', budget.cfrom, 'unop', budget.unop, 'win', win, 'need', 0,
  'quiet', quiet, 'hwm', now,
  'runid', id, 'epoch', epoch, 'rsv', rsv, 'slack', slack, 'grace', grace, 'gen', gen)
if not st then redis.call('HSET', STATE, 'seq', 0, 'cseq', 0) end
redis.call('HSET', BKT, 'gen', gen)
count_log()
redis.call('PUBLISH', EV, 's')
local reset_in = -1
if reset_at >= 0 then reset_in = reset_at - now end
return { rem, reset_in, epoch, mc }
