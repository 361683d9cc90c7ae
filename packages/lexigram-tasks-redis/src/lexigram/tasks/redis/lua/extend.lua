-- Push the leases of ARGV[4..] ("<token> <id>" each) to ARGV[3] seconds
-- from now; leases that are no longer held are skipped. Returns how many.
local deadline = lease_deadline(tonumber(ARGV[3]))
local held, extended = {}, 0
for i = 4, #ARGV do
  local id, token = split_lease(ARGV[i])
  if redis.call('HGET', JOB_PREFIX .. id, 'lx_token') == token then
    held[#held + 1] = deadline
    held[#held + 1] = id
    extended = extended + 1
  end
end
call_many('ZADD', K_LEASES, held, 'XX')
return extended
