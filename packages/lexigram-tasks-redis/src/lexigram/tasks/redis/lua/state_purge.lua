-- ARGV: ns, older_than, limit. Removes up to limit records that finished before older_than; returns how many.
local ids = redis.call('ZRANGEBYSCORE', ns .. ':finished', '-inf', '(' .. ARGV[2],
  'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  remove(id, job_key(id))
end
return #ids
