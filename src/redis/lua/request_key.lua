-- A request key of the server's native API, shared by every server of a namespace so
-- that a client's polls may reach any of them and still spend one unit (rules 7).
--
-- KEYS[1]: iq:{<namespace>}:key:<key>; its value is the server that holds the key's
-- ticket ("<owner>"), or that answered its grant ("<owner> <unix ms>").
-- ARGV: the operation, the calling server, a time to live in ms, the answer's instant.
--
-- claim     take the key if nobody holds it, or extend its life if the caller holds
--           it (a poll elsewhere does not: a key whose holder died lapses within its
--           time to live, and another server takes it); returns the holder.
-- answered  the holder answered the grant: kept a while, so that a retry anywhere
--           learns it was answered.
-- release   the holder dropped the ticket.
-- cancel    a `DELETE` at any server: a waiting key goes (its holder cancels its
--           ticket when it sees it gone); returns what was held.
-- holds     the holder's look at its key (its sweep): returns the value.
local held = redis.call('GET', KEYS[1])
local op, owner, ttl = ARGV[1], ARGV[2], ARGV[3]
local answered = held and string.find(held, ' ', 1, true)
if op == 'claim' then
  if not held then
    redis.call('SET', KEYS[1], owner, 'PX', ttl)
    return owner
  end
  if held == owner then
    redis.call('PEXPIRE', KEYS[1], ttl, 'GT')
  end
  return held
elseif op == 'answered' then
  if held == owner then
    redis.call('SET', KEYS[1], owner .. ' ' .. ARGV[4], 'PX', ttl)
  end
  return held
elseif op == 'release' then
  if held == owner or (answered and string.sub(held, 1, #owner + 1) == owner .. ' ') then
    redis.call('DEL', KEYS[1])
  end
  return held
elseif op == 'cancel' then
  if held and not answered then
    redis.call('DEL', KEYS[1])
  end
  return held
end
return held
