-- chatd's shared roulette, run atomically by Redis (EVALSHA). One script, every operation,
-- so that a worker loads one SHA. Every key starts with the base ARGV[2] ("PREFIX:{q}"): one
-- hash tag, so under Redis Cluster every key of the queue lives in one slot and each call
-- stays atomic. Redis' own clock (TIME) orders everything, so hosts need not agree on time.
--
-- Keys (B = base):
--   B:seq              counter: queue places (smaller waited longer)
--   B:open             zset seq -> peer: waiters who take anyone
--   B:int:<interest>   zset seq -> peer: waiters who gave that interest (picky or open)
--   B:sb:open, B:sb:int:<interest>  the same for the shadow-banned, who only meet each other
--   B:w:<peer>         hash: seq, since (ms), open (0/1), worker, a (address hash), p (pool:
--                      '' or 'sb:'), n, i1..in (interests)
--   B:ww:<worker>      set: the worker's waiters (for reaping a dead worker)
--   B:pairs:<worker>   hash: the worker's chatting peer -> its partner (for reaping)
--   B:parted           zset "a|b" (a < b) -> when they parted (ms): the rematch cooldown
--   B:alive            zset worker -> last heartbeat (ms)
--   B:online           hash worker -> people connected there
--   B:t:<token>        string: the peer holding a resume token (connected or away)
--   B:tw:<worker>      set: the worker's tokens (for reaping a dead worker)
--   B:ac:<address>     hash worker -> that address's connections there (live workers count)
--   B:rep:<address>    zset reporter address -> when (ms): reports within the window
--   B:ban:<address>    string (reports), with a TTL: a shadow ban
--   B:bshort:<8 hex>   set of banned addresses with that short form (what logs show), for a
--                      pardon; its TTL is the longest ban's
--   B:blk:<a>|<b>      string, with a TTL: two addresses (a < b) that are never paired
-- Addresses are keyed hashes (32 hex digits) made by the workers; no address is stored.
-- Peers are "WORKER#ID"; WORKER is "node/index/pid". A worker's channel is
-- "PREFIX:ch:WORKER" (ARGV[3] is "PREFIX:ch:"). Message text never passes through here.
--
-- Records published to a worker's channel: "M <to-id> <from-key> <waited-ms> <address>\n<i1>
-- \n<i2>..." (matched, with the searcher's address hash) and "L <to-id> <from-key> <reason>"
-- (partner left), each framed as "<len>:<record>" so that a channel message may carry several.
-- Resuming adds
-- "X <old-id> <new-key>" (take over), "H <new-id> <old-key> <partner-key>\n<json>" (handed over) and
-- "R <partner-id> <old-key> <new-key>" (your partner moved); "F <id> <key>" (refused) and the
-- lines themselves come from the workers.

local op, B, CH = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local DEAD_MS = 3000
local SCAN = 64

local function worker_of(peer)
  return string.match(peer, '^(.*)#') or ''
end

local function id_of(peer)
  return string.match(peer, '#(%d+)$') or '0'
end

local function frame(record)
  return string.len(record) .. ':' .. record
end

local function pair_key(a, b)
  if a < b then return a .. '|' .. b end
  return b .. '|' .. a
end

local function is_alive(worker)
  local beat = redis.call('ZSCORE', B .. ':alive', worker)
  return beat and tonumber(beat) >= now - DEAD_MS
end

-- A waiter's hash fields, or nil.
local function waiter(peer)
  local f = redis.call('HGETALL', B .. ':w:' .. peer)
  if #f == 0 then return nil end
  local h = {}
  for i = 1, #f, 2 do h[f[i]] = f[i + 1] end
  return h
end

-- Takes a waiter (its fields `h`) out of its pool's indexes; the hash stays.
local function unindex(peer, h)
  local pool = B .. ':' .. (h.p or '')
  redis.call('ZREM', pool .. 'open', peer)
  for i = 1, tonumber(h.n or '0') do
    redis.call('ZREM', pool .. 'int:' .. h['i' .. i], peer)
  end
end

-- Removes a waiter from every index; returns its hash fields, or nil.
local function unqueue(peer)
  local h = waiter(peer)
  if not h then return nil end
  unindex(peer, h)
  redis.call('SREM', B .. ':ww:' .. (h.worker or ''), peer)
  redis.call('DEL', B .. ':w:' .. peer)
  return h
end

-- Sets `worker`'s count of `address`'s connections (the field goes at 0); a day at most.
local function set_count(worker, address, count)
  local ac = B .. ':ac:' .. address
  if tonumber(count) > 0 then
    redis.call('HSET', ac, worker, count)
    redis.call('EXPIRE', ac, 86400)
  else
    redis.call('HDEL', ac, worker)
  end
  return ac
end

-- Puts a waiter's hash fields (as unqueue returned them) back in the indexes of its pool.
local function enqueue(peer, h)
  local fields = {}
  for k, v in pairs(h) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  local pool = B .. ':' .. (h.p or '')
  local seq = tonumber(h.seq)
  for i = 1, tonumber(h.n or '0') do redis.call('ZADD', pool .. 'int:' .. h['i' .. i], seq, peer) end
  if h.open == '1' then redis.call('ZADD', pool .. 'open', seq, peer) end
  redis.call('HSET', B .. ':w:' .. peer, unpack(fields))
  redis.call('SADD', B .. ':ww:' .. h.worker, peer)
end

local function is_banned(address)
  return address and address ~= '' and redis.call('EXISTS', B .. ':ban:' .. address) == 1
end

-- Forgets a dead worker: its waiters leave the queue, its people's partners are told.
local function reap(worker)
  for _, peer in ipairs(redis.call('SMEMBERS', B .. ':ww:' .. worker)) do unqueue(peer) end
  redis.call('DEL', B .. ':ww:' .. worker)
  local pairs_ = redis.call('HGETALL', B .. ':pairs:' .. worker)
  for i = 1, #pairs_, 2 do
    local mine, partner = pairs_[i], pairs_[i + 1]
    local pw = worker_of(partner)
    redis.call('HDEL', B .. ':pairs:' .. pw, partner)
    redis.call('PUBLISH', CH .. pw, frame('L ' .. id_of(partner) .. ' ' .. mine .. ' disconnected'))
  end
  redis.call('DEL', B .. ':pairs:' .. worker)
  for _, token in ipairs(redis.call('SMEMBERS', B .. ':tw:' .. worker)) do
    redis.call('DEL', B .. ':t:' .. token)
  end
  redis.call('DEL', B .. ':tw:' .. worker)
  redis.call('ZREM', B .. ':alive', worker)
  redis.call('HDEL', B .. ':online', worker)
end

-- The first waiter of zset `key` that `peer` may take: not itself, not a recent partner, on a
-- live worker. A waiter of a dead worker makes the whole worker forgotten at once (so one
-- search never steps over its waiters one by one). Returns peer, seq, and the earliest
-- parting that blocked one (or nil).
local function first_eligible(key, peer, cooldown, address, shadow)
  local blocked
  local start = 0
  while true do
    local got = redis.call('ZRANGE', key, start, start + SCAN - 1, 'WITHSCORES')
    if #got == 0 then return nil, nil, blocked end
    local reaped = false
    for i = 1, #got, 2 do
      local cand, seq = got[i], tonumber(got[i + 1])
      if cand ~= peer then
        local parted = redis.call('ZSCORE', B .. ':parted', pair_key(peer, cand))
        local theirs = redis.call('HGET', B .. ':w:' .. cand, 'a') or ''
        if parted and tonumber(parted) + cooldown > now then
          local p = tonumber(parted)
          if not blocked or p < blocked then blocked = p end
        elseif not shadow and is_banned(theirs) then
          -- Banned while it waited: over to the shadow pool, keeping its place.
          local h = unqueue(cand)
          h.p = 'sb:'
          enqueue(cand, h)
          reaped = true
          break
        elseif address ~= '' and theirs ~= ''
            and redis.call('EXISTS', B .. ':blk:' .. pair_key(address, theirs)) == 1 then
          -- A block: stepped over (it outlasts any wait, so no retry is scheduled).
        elseif is_alive(worker_of(cand)) then
          return cand, seq, blocked
        else
          reap(worker_of(cand))
          reaped = true
          break
        end
      end
    end
    -- After a reap the set changed under the page: look again from where it stood.
    if not reaped then start = start + SCAN end
  end
end

if op == 'search' then
  -- ARGV: op, B, CH, peer, worker, interest_timeout_ms, cooldown_ms, address, n, i1..in
  -- (sorted)
  local peer, worker = ARGV[4], ARGV[5]
  local timeout, cooldown = tonumber(ARGV[6]), tonumber(ARGV[7])
  local address = ARGV[8]
  local n = tonumber(ARGV[9])
  local ints = {}
  for i = 1, n do ints[i] = ARGV[9 + i] end
  local shadow = is_banned(address)
  local pool = shadow and 'sb:' or ''
  local P = B .. ':' .. pool
  redis.call('ZREMRANGEBYSCORE', B .. ':parted', '-inf', now - cooldown)
  -- A search shows its worker alive (its first heartbeat may still be on the way).
  redis.call('ZADD', B .. ':alive', now, worker)
  -- A repeated search keeps its place and its interest deadline, and replaces its interests.
  local old = unqueue(peer)
  local seq, since, was_open
  if old then
    seq, since, was_open = tonumber(old.seq), tonumber(old.since), old.open == '1'
  else
    seq, since, was_open = redis.call('INCR', B .. ':seq'), now, false
  end
  local is_open = was_open or n == 0 or now >= since + timeout
  while true do
    local best, best_seq, blocked
    for i = 1, n do
      local c, s, b = first_eligible(P .. 'int:' .. ints[i], peer, cooldown, address, shadow)
      if b and (not blocked or b < blocked) then blocked = b end
      if c and (not best_seq or s < best_seq) then best, best_seq = c, s end
    end
    if not best and is_open then
      local c, s, b = first_eligible(P .. 'open', peer, cooldown, address, shadow)
      if b and (not blocked or b < blocked) then blocked = b end
      best = c
    end
    if not best then
      -- Wait in the queue.
      local w = B .. ':w:' .. peer
      local fields = {'seq', seq, 'since', since, 'open', is_open and '1' or '0',
        'worker', worker, 'a', address, 'p', pool, 'n', n}
      for i = 1, n do
        fields[#fields + 1] = 'i' .. i
        fields[#fields + 1] = ints[i]
        redis.call('ZADD', P .. 'int:' .. ints[i], seq, peer)
      end
      redis.call('HSET', w, unpack(fields))
      if is_open then redis.call('ZADD', P .. 'open', seq, peer) end
      redis.call('SADD', B .. ':ww:' .. worker, peer)
      local wake = -1
      if not is_open then wake = since + timeout - now end
      if blocked then
        local retry = blocked + cooldown - now
        if wake < 0 or retry < wake then wake = retry end
      end
      return {'waiting', tostring(wake)}
    end
    local h = unqueue(best)
    local common = {}
    local theirs = {}
    for i = 1, tonumber(h.n or '0') do theirs[h['i' .. i]] = true end
    for i = 1, n do
      if theirs[ints[i]] then common[#common + 1] = ints[i] end
    end
    local pw = h.worker
    local delivered = 1
    if pw ~= worker then
      local rec = 'M ' .. id_of(best) .. ' ' .. peer .. ' ' .. (now - tonumber(h.since)) .. ' '
        .. address
      for i = 1, #common do rec = rec .. '\n' .. common[i] end
      delivered = redis.call('PUBLISH', CH .. pw, frame(rec))
    end
    if delivered > 0 then
      redis.call('HSET', B .. ':pairs:' .. worker, peer, best)
      redis.call('HSET', B .. ':pairs:' .. pw, best, peer)
      local reply = {'matched', best, tostring(now - since), tostring(now - tonumber(h.since)),
        h.a or ''}
      for i = 1, #common do reply[#reply + 1] = common[i] end
      return reply
    end
    -- Nobody listens on that worker's channel: it is gone. Forget it and look again.
    reap(pw)
  end
elseif op == 'cancel' then
  -- ARGV: op, B, CH, peer
  unqueue(ARGV[4])
  return 1
elseif op == 'part' then
  -- ARGV: op, B, CH, peer, partner, reason ('' when the partner's side already knows)
  local peer, partner, reason = ARGV[4], ARGV[5], ARGV[6]
  local pw = worker_of(partner)
  redis.call('HDEL', B .. ':pairs:' .. worker_of(peer), peer)
  redis.call('HDEL', B .. ':pairs:' .. pw, partner)
  redis.call('ZADD', B .. ':parted', now, pair_key(peer, partner))
  if reason ~= '' and pw ~= worker_of(peer) then
    redis.call('PUBLISH', CH .. pw, frame('L ' .. id_of(partner) .. ' ' .. peer .. ' ' .. reason))
  end
  return 1
elseif op == 'token' then
  -- ARGV: op, B, CH, token, peer, address, its connections on this worker. A day at most: a
  -- token whose removal was lost (the link was down) does not stay for ever; live ones are
  -- registered again when the link comes up. Returns the address's connections on every live
  -- worker.
  local worker, address = worker_of(ARGV[5]), ARGV[6]
  redis.call('SET', B .. ':t:' .. ARGV[4], ARGV[5], 'EX', 86400)
  redis.call('SADD', B .. ':tw:' .. worker, ARGV[4])
  if address == '' then return 1 end
  local ac = set_count(worker, address, ARGV[7])
  local total = 0
  local all = redis.call('HGETALL', ac)
  for i = 1, #all, 2 do
    if all[i] == worker or is_alive(all[i]) then
      total = total + tonumber(all[i + 1])
    else
      redis.call('HDEL', ac, all[i])
    end
  end
  return total
elseif op == 'count' then
  -- ARGV: op, B, CH, worker, address, its connections on this worker now
  set_count(ARGV[4], ARGV[5], ARGV[6])
  return 1
elseif op == 'report' then
  -- ARGV: op, B, CH, target, reporter, threshold, window_ms, ban_ms. Returns the distinct
  -- reporters if this report shadow-banned the target, else 0.
  local target, reporter = ARGV[4], ARGV[5]
  local threshold, window, ban = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  if target == reporter or is_banned(target) then return 0 end
  local rk = B .. ':rep:' .. target
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window)
  redis.call('ZADD', rk, now, reporter)
  redis.call('PEXPIRE', rk, window)
  local n = redis.call('ZCARD', rk)
  if n < threshold then return 0 end
  redis.call('DEL', rk)
  redis.call('SET', B .. ':ban:' .. target, n, 'PX', ban)
  local short = B .. ':bshort:' .. string.sub(target, 1, 8)
  redis.call('SADD', short, target)
  if redis.call('PTTL', short) < ban then redis.call('PEXPIRE', short, ban) end
  return n
elseif op == 'block' then
  -- ARGV: op, B, CH, address, address, ms
  redis.call('SET', B .. ':blk:' .. pair_key(ARGV[4], ARGV[5]), 1, 'PX', tonumber(ARGV[6]))
  return 1
elseif op == 'pardon' then
  -- ARGV: op, B, CH, short hashes (8 hex digits each, as logged): their shadow bans and
  -- reports go. Every worker sends it on reload; the second time finds nothing.
  local lifted = 0
  for i = 4, #ARGV do
    local short = B .. ':bshort:' .. ARGV[i]
    for _, address in ipairs(redis.call('SMEMBERS', short)) do
      lifted = lifted + redis.call('DEL', B .. ':ban:' .. address, B .. ':rep:' .. address)
    end
    redis.call('DEL', short)
  end
  return lifted
elseif op == 'untoken' then
  -- ARGV: op, B, CH, token, peer
  if redis.call('GET', B .. ':t:' .. ARGV[4]) == ARGV[5] then
    redis.call('DEL', B .. ':t:' .. ARGV[4])
  end
  redis.call('SREM', B .. ':tw:' .. worker_of(ARGV[5]), ARGV[4])
  return 1
elseif op == 'park' then
  -- ARGV: op, B, CH, peer. Out of the indexes; the hash (seq, since) stays for a resume.
  local h = waiter(ARGV[4])
  if h then unindex(ARGV[4], h) end
  return 1
elseif op == 'resume' then
  -- ARGV: op, B, CH, token, new peer. A token is good once.
  local tk = B .. ':t:' .. ARGV[4]
  local old = redis.call('GET', tk)
  if not old then return 'failed' end
  local ow = worker_of(old)
  redis.call('DEL', tk)
  redis.call('SREM', B .. ':tw:' .. ow, ARGV[4])
  if not is_alive(ow) then return 'failed' end
  if redis.call('PUBLISH', CH .. ow, frame('X ' .. id_of(old) .. ' ' .. ARGV[5])) == 0 then
    return 'failed'
  end
  return 'sent'
elseif op == 'handover' then
  -- ARGV: op, B, CH, old peer, new peer, partner ('' if none), searching (1/0), body
  local old, new, partner, body = ARGV[4], ARGV[5], ARGV[6], ARGV[8]
  local ow, nw = worker_of(old), worker_of(new)
  if partner ~= '' then
    -- The partner may have moved too (its own handover ran first): the pair knows where.
    partner = redis.call('HGET', B .. ':pairs:' .. ow, old) or partner
    local pw = worker_of(partner)
    redis.call('HDEL', B .. ':pairs:' .. ow, old)
    -- Only if the partner is still in this chat (it may have left meanwhile: its leave went to
    -- the old worker, which sends it on).
    if redis.call('HGET', B .. ':pairs:' .. pw, partner) == old then
      redis.call('HSET', B .. ':pairs:' .. nw, new, partner)
      redis.call('HSET', B .. ':pairs:' .. pw, partner, new)
      if pw ~= ow and pw ~= nw then
        redis.call('PUBLISH', CH .. pw, frame('R ' .. id_of(partner) .. ' ' .. old .. ' ' .. new))
      end
    end
  end
  if ARGV[7] == '1' then
    -- The parked place moves to the new peer; its worker's next search puts it back.
    local f = redis.call('HGETALL', B .. ':w:' .. old)
    if #f > 0 then
      redis.call('DEL', B .. ':w:' .. old)
      redis.call('SREM', B .. ':ww:' .. ow, old)
      for i = 1, #f, 2 do
        if f[i] == 'worker' then f[i + 1] = nw end
      end
      redis.call('HSET', B .. ':w:' .. new, unpack(f))
      redis.call('SADD', B .. ':ww:' .. nw, new)
    end
  end
  if nw ~= ow then
    redis.call('PUBLISH', CH .. nw,
      frame('H ' .. id_of(new) .. ' ' .. old .. ' ' .. partner .. '\n' .. body))
  end
  return 1
elseif op == 'beat' then
  -- ARGV: op, B, CH, worker, people online here, pair list (peer, partner, ...) to restore
  local worker, count = ARGV[4], ARGV[5]
  redis.call('ZADD', B .. ':alive', now, worker)
  redis.call('HSET', B .. ':online', worker, count)
  for i = 6, #ARGV, 2 do
    redis.call('HSET', B .. ':pairs:' .. worker, ARGV[i], ARGV[i + 1])
  end
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', B .. ':alive', '-inf', now - DEAD_MS)) do
    reap(dead)
  end
  local total = 0
  local all = redis.call('HGETALL', B .. ':online')
  for i = 1, #all, 2 do total = total + tonumber(all[i + 1]) end
  return total
end
return redis.error_reply('unknown op')
