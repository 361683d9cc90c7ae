-- Lease up to ARGV[3] ready jobs for ARGV[4] seconds, after putting lapsed
-- leases and due delayed jobs back on the ready list. Each leased job's
-- attempt is incremented here. ARGV[5] and ARGV[6] are the client's clock
-- for started_at (see now_iso). ARGV[7] and ARGV[8], when given, are a
-- concurrency limiter's key prefix and the worker's holder prefix: the lease
-- then takes the slots that a job's lx_slots field names (see take_slots).
-- Returns one item per job (see below) and, last: -2 if ready jobs are left,
-- else the seconds until the next delayed job or lease is due (-1: none).

-- Small numbers as text, each formatted once: ids' lengths (an rq id is 36
-- characters) and attempts repeat. The table is made on first use: a lexigram
-- id (32 characters) on its first lease needs none.
local texts
local function text(n)
  if not texts then texts = {} end
  local t = texts[n]
  if not t then
    t = string.format('%d', n)  -- tostring would be '%.14g'
    texts[n] = t
  end
  return t
end

-- A sorted set of up to 128 members is a listpack, which every insert walks
-- twice (to look the member up, then to find its place) and every removal
-- half-way: with a worker's 50-100 leases in the lease set and rq's started
-- registry, that was about half of a job's server time. A skiplist costs a
-- small fraction of that. Redis turns a listpack into a skiplist when a member
-- longer than zset-max-listpack-value (64 by default) is added, and keeps it a
-- skiplist until the set is empty; adding a long member and removing it at
-- once, unseen (a script is atomic), converts the set.
local function as_skiplist(key)
  local encoding = redis.call('OBJECT', 'ENCODING', key)
  if encoding == 'listpack' or encoding == 'ziplist' then
    local long = string.rep('-', 1025)  -- longer than any setting likely in use
    redis.call('ZADD', key, '0', long)
    redis.call('ZREM', key, long)
  end
end

-- The slots lx_slots names ("name\tlimit", tab-separated pairs, written at
-- enqueue for a job whose id needs no escaping), all or none, for holder
-- ARGV[8] .. id until the lease's deadline, under the rule
-- RedisConcurrencyLimiter's script follows: a set is cleaned of lapsed
-- holders only when it looks full. Returns the reply's status: '2' taken,
-- '3' a limit full. Saves the worker a round trip per leased batch.
local SLOT_PREFIX, HOLDER_PREFIX = ARGV[7], ARGV[8]
local slot_ms, limit_text, limit
local function room(key, holder, asked)
  if asked ~= limit_text then limit_text, limit = asked, tonumber(asked) end
  local size = redis.call('ZCARD', key)
  if size < limit then return size end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', NOW_TEXT)
  size = redis.call('ZCARD', key)
  if size < limit or redis.call('ZSCORE', key, holder) then return size end
  return false
end
local function hold(key, holder, deadline, size)
  redis.call('ZADD', key, deadline, holder)
  if size == 0 then
    redis.call('PEXPIRE', key, slot_ms)
  else
    redis.call('PEXPIRE', key, slot_ms, 'GT')
  end
end
local function take_slots(spec, id, deadline)
  local holder = HOLDER_PREFIX .. id
  -- The set outlives its longest lease (the deadline may be rounded up a second).
  if not slot_ms then slot_ms = string.format('%d', math.ceil(ARGV[4] * 1000) + 2000) end
  local tab = string.find(spec, '\t', 1, true)
  if not string.find(spec, '\t', tab + 1, true) then  -- one limit: the usual case
    local key = SLOT_PREFIX .. string.sub(spec, 1, tab - 1)
    local size = room(key, holder, string.sub(spec, tab + 1))
    if not size then return '3' end
    hold(key, holder, deadline, size)
    return '2'
  end
  local fields, keys, sizes = {}, {}, {}
  for field in string.gmatch(spec, '[^\t]+') do fields[#fields + 1] = field end
  for i = 1, #fields - 1, 2 do  -- name, limit
    local key = SLOT_PREFIX .. fields[i]
    local size = room(key, holder, fields[i + 1])
    if not size then return '3' end
    keys[#keys + 1] = key
    sizes[#keys] = size
  end
  for i, key in ipairs(keys) do hold(key, holder, deadline, sizes[i]) end
  return '2'
end

reclaim('100')
promote('1000')
local out = {}
local wanted = ARGV[3]
local ids, remaining = pop_ready(wanted)
if #ids > 0 then
  local deadline = lease_deadline(ARGV[4] + 0)
  -- Tokens for as many jobs as asked for (the increment is then the argument
  -- as sent); the last #ids of them are used.
  local first = redis.call('INCRBY', K_SEQ, wanted) - #ids
  local started_at = now_iso(ARGV[5], ARGV[6])
  local leases, started = {}, {}
  for i, id in ipairs(ids) do
    local key = JOB_PREFIX .. id
    local token = string.format('%d', first + i)
    local f = redis.call('HMGET', key, 'data', 'lx_attempt', 'lx_slots')
    local data, missing = f[1], '0'
    -- A job's first lease (attempt '0', the common case) without a conversion.
    local attempt = f[2] == '0' and '1' or text((tonumber(f[2]) or 0) + 1)
    if not data then
      -- An id without a job (a foreign producer's mistake): keep the entry
      -- itself as the payload so that it is dead-lettered, not lost.
      data, missing = id, '1'
      redis.call('HSET', key, 'data', id, 'origin', QUEUE_NAME)
    elseif f[3] and HOLDER_PREFIX then
      missing = take_slots(f[3], id, deadline)
    end
    redis.call('HSET', key, 'status', 'started', 'lx_attempt', attempt, 'lx_token', token,
      'started_at', started_at)
    leases[2 * i - 1], leases[2 * i] = deadline, id
    started[2 * i - 1], started[2 * i] = '+inf', id .. ':' .. token
    -- One reply item per job (each item costs the client a parse step):
    -- "<token> <attempt> <status> <len(id)> <id><payload>", status '1' for a
    -- missing job, else take_slots's (or '0').
    local length = #id
    out[i] = token .. ' ' .. attempt .. ' ' .. missing .. ' '
      .. (length == 32 and '32' or text(length)) .. ' ' .. id .. data
  end
  -- Below about 8 leases the two encodings cost the same, and fewer are the
  -- cheaper as a listpack; the started registry holds as many as the lease set.
  if redis.call('ZCARD', K_LEASES) + #ids >= 8 then
    as_skiplist(K_LEASES)
    as_skiplist(K_STARTED)
  end
  -- Each sorted set once for the whole batch: a redis.call has a cost of its own.
  call_many('ZADD', K_LEASES, leases)
  call_many('ZADD', K_STARTED, started)
end
if remaining > 0 then
  wake()  -- pass the turn on to another waiting consumer
  out[#out + 1] = '-2'
else
  out[#out + 1] = tostring(next_due())
end
return out
