-- Monitoring, read only. Reply: {exists, remaining, reset_in (-1: at the next grant),
-- need, epoch, mc, quiet_in, grants in the log, free_in of bucket 0, 1, ...}.
local st, now = open(false)
if not st then return { 0 } end
local need = st.need
if server_id() ~= st.runid then need = 2 end
local reset_in = -1
if st.reset_at >= 0 then reset_in = st.reset_at - now end
local reply = { 1, st.rem, reset_in, need, st.epoch, st.mc, math.max(st.quiet - now, 0),
  redis.call('ZCARD', LOG) }
for b = 0, st.mc - 1 do reply[#reply + 1] = math.max(busy_until(st, b) - now, 0) end
return reply
