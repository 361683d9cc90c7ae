-- Push the leases of ARGV[4..] (id, token pairs) to ARGV[3] seconds from
-- now; pairs that no longer hold their lease are skipped. Returns how many.
local deadline = NOW + tonumber(ARGV[3])
local extended = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', JOB_PREFIX .. id, 'lx_token') == ARGV[i + 1] then
    redis.call('ZADD', K_LEASES, 'XX', deadline, id)
    extended = extended + 1
  end
end
return extended
