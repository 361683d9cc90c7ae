-- Shared prelude of every lexigram script (prepended before loading).
-- KEYS are the queue's keys that the script uses, K_READY to K_CANCELED in
-- keys.py's order: _scripts.py writes the line naming them (every key
-- passed costs a call about as much as a Redis command). ARGV[1] is the
-- job-hash prefix (rq's "rq:job:"), ARGV[2] the queue name. Job hashes are
-- addressed through that prefix, so these scripts need a non-cluster Redis,
-- as rq itself does.
local JOB_PREFIX = ARGV[1]
local QUEUE_NAME = ARGV[2]

local clock = redis.call('TIME')
local NOW_SEC = clock[1] + 0  -- arithmetic converts: half of what tonumber() costs
local NOW_USEC = clock[2] + 0
local NOW = NOW_SEC + NOW_USEC / 1000000

-- NOW's microseconds as six digits, and NOW as text: a number passed to
-- redis.call is formatted with sprintf, which costs about as much as a
-- small command.
local USEC_TEXT = clock[2]
if #USEC_TEXT < 6 then USEC_TEXT = string.rep('0', 6 - #USEC_TEXT) .. USEC_TEXT end

local NOW_TEXT = clock[1] .. '.' .. USEC_TEXT

local function is_pending(status)
  return status == 'queued' or status == 'scheduled' or status == 'started'
end

-- A Unix time in rq's timestamp format (utcformat): 2026-11-27T21:54:03.123456Z.
-- Every quotient is of non-negative integers, written (a - a % b) / b: the
-- operators run in the Lua VM, math.floor is a C call each time, and this
-- runs on every enqueue, lease and ack.
local function iso(sec, usec)
  local secs = sec % 86400
  local z = (sec - secs) / 86400 + 719468
  local doe = z % 146097
  local era = (z - doe) / 146097
  local t = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524
    - (doe - doe % 146096) / 146096
  local yoe = (t - t % 365) / 365
  local doy = doe - 365 * yoe - (yoe - yoe % 4) / 4 + (yoe - yoe % 100) / 100
  local mp = (5 * doy + 2 - (5 * doy + 2) % 153) / 153
  local day = doy - (153 * mp + 2 - (153 * mp + 2) % 5) / 5 + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local minute = secs % 3600
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day,
    (secs - minute) / 3600, (minute - minute % 60) / 60, secs % 60, usec)
end

-- NOW in rq's format. `second` and `prefix` are the client's clock's second
-- and that second in rq's format (_scripts.clock_hint); when the server's
-- clock reads the same second, only the microseconds are written here
-- (formatting a date costs as much as a few commands).
local function now_iso(second, prefix)
  if second == clock[1] then return prefix .. USEC_TEXT .. 'Z' end
  return iso(NOW_SEC, NOW_USEC)
end

-- The score of a lease that lapses `seconds` from now, as text (a number
-- passed to redis.call is formatted with sprintf each time). A lease of 10 s
-- or more lapses at the next whole second: a sorted set of up to 128 members
-- (a listpack) stores an integer score as an integer but a fraction as text,
-- which every insert parses again (strtod) for each member it walks past;
-- with a worker's leases in the set, that was most of a lease's server time.
local function lease_deadline(seconds)
  local deadline = NOW + seconds
  if seconds >= 10 then
    return string.format('%d', math.ceil(deadline))  -- tostring would be '%.14g'
  end
  return string.format('%.17g', deadline)
end

-- redis.call(command, key[, option], ...) over the flat list args, at most
-- 1000 of them a call (unpack's limit is 8000); pairs stay together.
local function call_many(command, key, args, option)
  for i = 1, #args, 1000 do
    local last = math.min(i + 999, #args)
    if option then
      redis.call(command, key, option, unpack(args, i, last))
    else
      redis.call(command, key, unpack(args, i, last))
    end
  end
end

-- Wake one blocked consumer (dequeue waits on this list with BLPOP); one
-- token is enough because a consumer that leases and leaves work behind
-- passes the token on.
local function wake()
  if redis.call('LLEN', K_WAKE) == 0 then
    redis.call('RPUSH', K_WAKE, '1')
  end
end

-- The ready list is rq's queue list, kept sorted: priority 9 first, FIFO
-- within a priority. K_PRIO counts the ready jobs of each priority above 0,
-- so the insertion point of a priority job is known without reading the
-- jobs; priority 0 (the common case) is a plain RPUSH.
local function priority_counts()
  local flat = redis.call('HGETALL', K_PRIO)
  if #flat == 0 then return flat end  -- no priorities (the common case): nothing to sort
  local counts = {}
  for i = 1, #flat, 2 do
    counts[#counts + 1] = {tonumber(flat[i]), tonumber(flat[i + 1])}
  end
  table.sort(counts, function(a, b) return a[1] > b[1] end)
  return counts
end

-- Put id into the ready list behind its first `ahead` entries.
local function insert_after(id, ahead)
  if ahead == 0 then
    redis.call('LPUSH', K_READY, id)
  else
    local pivot = redis.call('LINDEX', K_READY, ahead - 1)
    if pivot then
      redis.call('LINSERT', K_READY, 'AFTER', pivot, id)
    else
      redis.call('RPUSH', K_READY, id)
    end
  end
end

local function push_ready(id, priority)
  if priority <= 0 then
    redis.call('RPUSH', K_READY, id)
    return
  end
  local ahead = 0
  for _, pc in ipairs(priority_counts()) do
    if pc[1] >= priority then ahead = ahead + pc[2] end
  end
  insert_after(id, ahead)
  redis.call('HINCRBY', K_PRIO, priority, 1)
end

-- Put a job back at the front of its priority band: after every ready job of
-- a higher priority, before those of its own (a reclaimed job has waited its
-- turn already; it must not wait behind the backlog again).
local function push_front(id, priority)
  local ahead = 0
  for _, pc in ipairs(priority_counts()) do
    if pc[1] > priority then ahead = ahead + pc[2] end
  end
  insert_after(id, ahead)
  if priority > 0 then redis.call('HINCRBY', K_PRIO, priority, 1) end
end

-- Returns the popped ids (at most n, as text) and how many ready jobs are left.
local function pop_ready(n)
  local ids = redis.call('LPOP', K_READY, n)
  if not ids then
    redis.call('DEL', K_PRIO)
    return {}, 0
  end
  local left = #ids
  for _, pc in ipairs(priority_counts()) do
    if left <= 0 then break end
    local take = math.min(left, pc[2])
    left = left - take
    if take >= pc[2] then
      redis.call('HDEL', K_PRIO, pc[1])
    else
      redis.call('HINCRBY', K_PRIO, pc[1], -take)
    end
  end
  local remaining = redis.call('LLEN', K_READY)
  if remaining == 0 then redis.call('DEL', K_PRIO) end
  return ids, remaining
end

-- A lease as the client sends it back: "<token> <id>".
local function split_lease(lease)
  local token, id = string.match(lease, '^(%d+) (.*)')
  return id, token
end

local function release_dedup(dedup, id)
  if dedup and redis.call('HGET', K_DEDUP, dedup) == id then
    redis.call('HDEL', K_DEDUP, dedup)
  end
end

-- A job ends cancelled: rq's 'canceled' status, in rq's CanceledJobRegistry
-- for ttl seconds (0: deleted at once), its dedup key released.
local function finish_canceled(key, id, ttl, dedup)
  release_dedup(dedup, id)
  if ttl > 0 then
    redis.call('HSET', key, 'status', 'canceled', 'ended_at', now_iso(), 'lx_outcome', 'cancelled',
      'lx_token', '')
    redis.call('EXPIRE', key, math.ceil(ttl))
    redis.call('ZADD', K_CANCELED, NOW + ttl, id)
    redis.call('ZREMRANGEBYSCORE', K_CANCELED, '-inf', NOW)
  else
    redis.call('DEL', key)
  end
end

-- Leases that lapsed (their worker died or stalled) go back to the front of
-- the ready list, the longest-lapsed first; a job whose cancellation was
-- asked for while it ran (lx_cancel) ends cancelled instead: its worker died
-- before stopping it, and it must not run again.
-- `limit` is text, as is every argument of the commands run on every lease.
local function reclaim(limit)
  local lapsed = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW_TEXT, 'LIMIT', '0', limit)
  for i = #lapsed, 1, -1 do
    local id = lapsed[i]
    local key = JOB_PREFIX .. id
    redis.call('ZREM', K_LEASES, id)
    local f = redis.call('HMGET', key, 'lx_token', 'lx_priority', 'lx_cancel', 'lx_ttl', 'lx_dedup',
      'status')
    if f[6] then
      if f[1] then redis.call('ZREM', K_STARTED, id .. ':' .. f[1]) end
      if f[3] == '1' then
        finish_canceled(key, id, tonumber(f[4]) or 0, f[5])
      else
        redis.call('HDEL', key, 'lx_token')
        redis.call('HSET', key, 'status', 'queued', 'lx_retrying', '0')
        push_front(id, tonumber(f[2]) or 0)
      end
    end
  end
  return #lapsed
end

-- Delayed jobs whose time has come go to ready.
local function promote(limit)
  local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', NOW_TEXT, 'LIMIT', '0', limit)
  for _, id in ipairs(due) do
    local key = JOB_PREFIX .. id
    redis.call('ZREM', K_SCHEDULED, id)
    redis.call('HSET', key, 'status', 'queued')
    push_ready(id, tonumber(redis.call('HGET', key, 'lx_priority')) or 0)
  end
  return #due
end

-- Seconds until a delayed job or a lease needs attention; -1 when nothing waits.
local function next_due()
  local due = -1
  local s = redis.call('ZRANGE', K_SCHEDULED, '0', '0', 'WITHSCORES')
  if s[2] then due = tonumber(s[2]) - NOW end
  local l = redis.call('ZRANGE', K_LEASES, '0', '0', 'WITHSCORES')
  if l[2] then
    local d = tonumber(l[2]) - NOW
    if due < 0 or d < due then due = d end
  end
  if due ~= -1 and due < 0 then due = 0 end
  return due
end
